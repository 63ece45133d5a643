"""In-training evaluation: every N steps, greedy answers on a small held-out subset, logged against the step."""

from __future__ import annotations

import logging
from typing import Any

from transformers import TrainerCallback

from vlmtune.config import EvalConfig

log = logging.getLogger("vlmtune")


class GenerationEval(TrainerCallback):
    """Scores `records` every `every` optimizer steps on all ranks (generation is split across them) and logs
    `eval/accuracy` to W&B against `train/global_step`, the step metric the Trainer's W&B callback defines, with
    `eval/generations`: a table of the first `table_rows` probes (image, question, answer, prediction) at that step."""

    def __init__(self, processor, records: list[dict[str, Any]], eval_cfg: EvalConfig, every: int, state,
                 table_rows: int = 0) -> None:
        self.processor, self.records, self.eval_cfg, self.every, self.state = processor, records, eval_cfg, every, state
        self.table_rows = table_rows  # rows of the W&B generations table (the same fixed probes every time); 0: none
        self.history: list[dict[str, float]] = []  # what was measured, for the caller and the tests

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every:
            return
        from vlmtune.eval.run import evaluate_model

        model.eval()
        rows, metrics = evaluate_model(model, self.processor, self.records, self.eval_cfg, self.state)
        model.train()
        entry = {"step": state.global_step, **{k: v for k, v in metrics.items() if k != "n"}}
        self.history.append(entry)
        if state.is_world_process_zero:
            log.info("in-training evaluation at step %d: accuracy %.4f", state.global_step, metrics["accuracy"])
            import wandb

            if wandb.run is not None:
                logged = {f"eval/{k}": v for k, v in entry.items() if k != "step"}
                if self.table_rows > 0:
                    from vlmtune.tracking import generations_table

                    logged["eval/generations"] = generations_table(rows, self.records, state.global_step,
                                                                   self.table_rows)
                wandb.log(logged | {"train/global_step": state.global_step})
