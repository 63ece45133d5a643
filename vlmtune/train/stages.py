"""The two steps every training recipe takes around its trainer: make the model trainable as the per-part policy
says, and save what was trained (gathered under ZeRO-3 / FSDP2, written by the main process, optionally logged as a
W&B artifact)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("vlmtune")

# What a logged checkpoint artifact carries from the run's facts (vlmtune.tracking.log_run_facts).
ARTIFACT_FACTS = ("git/sha", "data/train/fingerprint")


def make_trainable(model, cfg) -> tuple[Any, str]:
    """Apply `cfg.policy` (frozen / full / LoRA / QLoRA per part); return the model and its logged parameter table."""
    from vlmtune.train.policy import apply_policy, parameter_table

    model = apply_policy(model, cfg.policy, cfg.peft)
    parameters = parameter_table(model, cfg.policy, cfg.optim, cfg.peft)
    log.info("parameters:\n%s", parameters)
    return model, parameters


def save_trained(run, model, processor, kind: str, facts: dict[str, Any] | None = None, **provenance: Any) -> Path:
    """Write <run_dir>/checkpoint with `provenance` (e.g. init_from) and return it, on every process once all are
    done. Sharded weights are gathered first; with `logger.log_checkpoint` the directory becomes a W&B artifact whose
    metadata holds the provenance and the run's `facts` (git sha, data fingerprint)."""
    from vlmtune import tracking
    from vlmtune.model.checkpoint import save_checkpoint
    from vlmtune.processes import is_main_process
    from vlmtune.train.sharded import full_weights

    out = run.dir / "checkpoint"
    with full_weights(model) as weights:  # ZeRO-3 / FSDP2: gathered, written by rank 0
        if is_main_process():
            save_checkpoint(model, processor, out, run.provenance(**provenance), weights)
            log.info("%s: checkpoint written to %s", kind, out)
            if run.tracker is not None and run.cfg.logger.log_checkpoint:
                metadata = provenance | {key: (facts or {}).get(key) for key in ARTIFACT_FACTS}
                tracking.log_checkpoint(run.tracker, out, kind=kind, metadata=metadata)
    run.wait_for_everyone()
    return out
