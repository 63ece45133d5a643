"""Training curves from a Trainer's log history: the loss (and in-training accuracy, when measured) per step."""

from __future__ import annotations

import logging
from pathlib import Path

from vlmtune.pictures import figure, save

log = logging.getLogger("vlmtune")


def training_curves(history: list[dict], path: str | Path, title: str = "training") -> Path | None:
    """Plot `loss` against `step` (and `eval/accuracy` on a second axis where logged); None when nothing was logged."""
    losses = [(entry["step"], entry["loss"]) for entry in history if "loss" in entry and "step" in entry]
    accuracy = [(entry["step"], entry["eval/accuracy"]) for entry in history if "eval/accuracy" in entry]
    if not losses:
        log.info("%s: no loss was logged (fewer steps than logging_steps), so no %s", title, Path(path).name)
        return None
    fig = figure(6, 3.5)
    axes = fig.add_subplot(1, 1, 1)
    axes.plot(*zip(*losses, strict=True), marker="o", markersize=3, color="tab:blue", label="training loss")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss", color="tab:blue")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    if accuracy:
        right = axes.twinx()
        right.plot(*zip(*accuracy, strict=True), marker="s", color="tab:green", label="held-out accuracy")
        right.set_ylabel("accuracy", color="tab:green")
        right.set_ylim(0, 1)
    save(fig, path)
    return Path(path)
