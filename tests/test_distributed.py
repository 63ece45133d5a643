"""Several processes on one CPU machine (gloo) through `accelerate launch`, never a home-made launcher."""

from __future__ import annotations

import json
import re
import sys

import torch
from conftest import FAST, run_cli, vlmtune
from safetensors.torch import load_file


def launch(processes: int) -> list[str]:
    """`accelerate launch` with several gloo ranks on a CPU-only machine (`--cpu` would start one)."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]


def test_two_and_three_rank_evaluation_equal_one_rank(pipeline, shapes):
    n_test = len(json.loads((shapes / "test.json").read_text()))
    assert n_test % 2 and n_test % 3, "the test set must divide between neither 2 nor 3 ranks"
    checkpoint = f"checkpoint={pipeline['sft'] / 'checkpoint'}"
    one = pipeline["runs"] / "eval-1rank"
    vlmtune("evaluate", f"run_dir={one}", checkpoint, "logger=none", "eval.batch_size=4", "eval.likelihood=true")
    assert "likelihood/perplexity" in json.loads((one / "metrics.json").read_text())
    for ranks in (2, 3):
        many = pipeline["runs"] / f"eval-{ranks}rank"
        run_cli(*launch(ranks), "recipes/evaluate.py", f"run_dir={many}", checkpoint, "logger=none",
                "eval.batch_size=4", "eval.likelihood=true")
        metrics, expected = (json.loads((d / "metrics.json").read_text()) for d in (many, one))
        # Generation scores are identical; teacher-forced losses agree to float rounding (each process runs its own
        # thread layout, so the sums inside the forward differ in the last bits).
        likelihood = {k for k in expected if k.startswith("likelihood/")}
        assert {k: v for k, v in metrics.items() if k not in likelihood} == {
            k: v for k, v in expected.items() if k not in likelihood}
        assert all(abs(metrics[k] - expected[k]) <= 1e-6 * abs(expected[k]) for k in likelihood)
        assert _rows(many) == _rows(one)
        assert len({row["id"] for row in _rows(many)}) == n_test
        assert json.loads((many / "results.json").read_text())["num_processes"] == ranks


def _assert_same_adapter(one, many) -> None:
    """Data parallelism changes nothing but float rounding: 2 ranks x batch B/2 take the steps 1 rank x batch B does."""
    expected, got = (load_file(d / "checkpoint" / "adapter_model.safetensors") for d in (one, many))
    assert expected.keys() == got.keys()
    assert any(expected[k].abs().max() > 0 for k in expected if ".lora_B." in k), "the adapter must have trained"
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-5)


def test_two_rank_sft_trains_into_one_run_directory_like_one_rank(pipeline):
    runs = pipeline["runs"] / "runs-2rank"
    init = f"init_from={pipeline['pretrain'] / 'checkpoint'}"
    output = run_cli(*launch(2), "recipes/sft.py", f"paths.runs={runs}", init, "logger=none", "evaluate_at_end=false",
                     *FAST, "optim.batch_size=2")
    # Both ranks resolve the default run directory on their own: it must be the same one.
    run_dirs = list((runs / "sft").iterdir())
    assert len(run_dirs) == 1, output
    _assert_same_adapter(pipeline["sft"], run_dirs[0])  # the pipeline's sft: 1 rank, FAST (batch 4), same init


def test_two_rank_length_microbatches_train_what_one_rank_trains_whole(pipeline, shapes, tmp_path):
    """Answers of 0-135 extra words: each rank cuts its batch into length-sorted pieces (the ranks agree on how many),
    and 2 ranks x 2 samples train the adapter that 1 rank x 4 trains with the batches whole."""
    records = json.loads((shapes / "train.json").read_text())[:16]
    for k, record in enumerate(records):
        record["image"] = str(shapes / record["image"])
        record["conversations"][1]["value"] += " because" + " it is so" * (k * 7 % 4 * 15)
    (tmp_path / "varied.json").write_text(json.dumps(records))
    init = f"init_from={pipeline['pretrain'] / 'checkpoint'}"
    common = [init, f"data.train={tmp_path / 'varied.json'}", "logger=none", "evaluate_at_end=false",
              "optim.max_steps=4", "logging_steps=1"]
    whole, two = tmp_path / "whole", tmp_path / "two"
    vlmtune("sft", f"run_dir={whole}", *common, "optim.batch_size=4", "optim.microbatch_by_length=false")
    output = run_cli(*launch(2), "recipes/sft.py", f"run_dir={two}", *common, "optim.batch_size=2")
    pieces = re.search(r"length micro-batches: (\d+) of 4 batches ran in (\d+) pieces", output)
    assert pieces and int(pieces[1]) >= 2, output  # rank 0 split most of its batches
    _assert_same_adapter(whole, two)


def test_two_rank_dpo_takes_the_steps_of_one_rank(pipeline):
    init = f"init_from={pipeline['sft'] / 'checkpoint'}"
    steps = ["optim.max_steps=3", "logger=none", "eval.batch_size=16"]
    one, two = pipeline["runs"] / "dpo-1rank", pipeline["runs"] / "dpo-2rank"
    vlmtune("dpo", f"run_dir={one}", init, *steps, "optim.batch_size=4")
    run_cli(*launch(2), "recipes/dpo.py", f"run_dir={two}", init, *steps, "optim.batch_size=2")
    _assert_same_adapter(one, two)
