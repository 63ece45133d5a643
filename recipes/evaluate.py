"""Score a checkpoint on a task: batched greedy generation, split across accelerate processes.

Run as `vlmtune evaluate checkpoint=<dir> [eval/task=<name>] [overrides]` or
`accelerate launch --multi_gpu --num_processes 2 recipes/evaluate.py checkpoint=<dir>`.
Writes <run_dir>/predictions.jsonl, <run_dir>/metrics.json and <run_dir>/results.json.
"""

import hydra
from omegaconf import DictConfig

from vlmtune.errors import run_command
from vlmtune.hydra_setup import setup
from vlmtune.launch import launching

setup()


@hydra.main(config_path="../conf", config_name="evaluate", version_base="1.3")
@launching
def main(cfg: DictConfig) -> float:
    from vlmtune.eval.run import evaluate_checkpoint
    from vlmtune.runs import start_run

    run = start_run(cfg, "evaluate")
    metrics = evaluate_checkpoint(run, run.cfg.checkpoint)
    run.finish()
    return next(iter(metrics.values()))  # the task's first metric: what a sweeper optimises


if __name__ == "__main__":
    run_command(main)
