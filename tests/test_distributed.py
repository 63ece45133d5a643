"""Several processes on one CPU machine (gloo) through `accelerate launch`, never a home-made launcher."""

from __future__ import annotations

import json
import sys

from conftest import FAST, run_cli, vlmtune


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


def test_two_rank_sft_trains_into_one_run_directory(pipeline):
    runs = pipeline["runs"] / "runs-2rank"
    init = f"init_from={pipeline['pretrain'] / 'checkpoint'}"
    output = run_cli(*launch(2), "recipes/sft.py", f"paths.runs={runs}", init, "logger=none", "evaluate_at_end=false",
                     *FAST)
    # Both ranks resolve the default run directory on their own: it must be the same one.
    run_dirs = list((runs / "sft").iterdir())
    assert len(run_dirs) == 1, output
    assert (run_dirs[0] / "checkpoint" / "adapter_config.json").exists()
