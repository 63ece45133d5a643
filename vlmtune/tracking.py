"""Weights & Biases: offline by default without an API key, grouped by Hydra sweep, main process only."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vlmtune.config import LoggerConfig


def _sweep_identity() -> tuple[str | None, str | None]:
    """(group, name) of this job inside a Hydra multirun, or (None, None) in a single run."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
    except (ImportError, ValueError):
        return None, None
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None, None
    group = Path(hydra_cfg.sweep.dir).name
    name = hydra_cfg.job.override_dirname or str(hydra_cfg.job.num)
    return group, f"{group}/{name}"


def start(cfg: LoggerConfig, run_dir: Path, job_type: str, config: dict[str, Any]):
    """Start a W&B run writing under `run_dir`, or return None when `logger.backend=none`."""
    if cfg.backend == "none":
        os.environ["WANDB_MODE"] = "disabled"  # so the HF Trainer's W&B callback stays quiet too
        return None
    if cfg.backend != "wandb":
        raise ValueError(f"logger.backend={cfg.backend!r} is not known; valid values: none, wandb")
    import wandb

    mode = cfg.mode or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
    os.environ["WANDB_MODE"] = mode
    os.environ["WANDB_DIR"] = str(run_dir)
    group, name = _sweep_identity()
    return wandb.init(
        project=cfg.project,
        entity=cfg.entity,
        dir=str(run_dir),
        mode=mode,
        job_type=job_type,
        group=group,
        name=name,
        tags=[job_type, *cfg.tags] + ([f"sweep:{group}"] if group else []),
        config=config,
        reinit="finish_previous",  # a multirun job starts a fresh run after the previous job's
    )


def samples_table(rows: list[dict[str, Any]], limit: int):
    """A W&B table of evaluation samples with their images."""
    import wandb
    from PIL import Image

    table = wandb.Table(columns=["id", "image", "prompt", "prediction", "target", "correct"])
    for row in rows[:limit]:
        images = [wandb.Image(Image.open(p).convert("RGB")) for p in row.get("images", [])]
        table.add_data(row["id"], images[0] if images else None, row["prompt"], row["prediction"], row["target"],
                       row["score"])
    return table
