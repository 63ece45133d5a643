"""Several processes on one CPU machine (gloo) through `accelerate launch`, never a home-made launcher."""

from __future__ import annotations

import json
import sys

from conftest import FAST, run_cli, vlmtune

LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]


def test_two_rank_evaluation_equals_one_rank(pipeline, shapes):
    n_test = len(json.loads((shapes / "test.json").read_text()))
    assert n_test % 2 == 1, "the test set must not divide between 2 ranks"
    checkpoint = f"checkpoint={pipeline['sft'] / 'checkpoint'}"
    one, two = pipeline["runs"] / "eval-1rank", pipeline["runs"] / "eval-2rank"
    vlmtune("evaluate", f"run_dir={one}", checkpoint, "logger=none", "eval.batch_size=4")
    run_cli(*LAUNCH, "recipes/evaluate.py", f"run_dir={two}", checkpoint, "logger=none", "eval.batch_size=4")
    assert json.loads((two / "metrics.json").read_text()) == json.loads((one / "metrics.json").read_text())
    assert _rows(two) == _rows(one)
    assert len({row["id"] for row in _rows(two)}) == n_test


def test_two_rank_sft_trains_into_one_run_directory(pipeline):
    runs = pipeline["runs"] / "runs-2rank"
    init = f"init_from={pipeline['pretrain'] / 'checkpoint'}"
    output = run_cli(*LAUNCH, "recipes/sft.py", f"paths.runs={runs}", init, "logger=none", "evaluate_at_end=false",
                     *FAST)
    # Both ranks resolve the default run directory on their own: it must be the same one.
    run_dirs = list((runs / "sft").iterdir())
    assert len(run_dirs) == 1, output
    assert (run_dirs[0] / "checkpoint" / "adapter_config.json").exists()
