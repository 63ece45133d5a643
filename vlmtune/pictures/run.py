"""The pictures a training recipe leaves in its run directory: loss.png and, for a composed model, model.png."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("vlmtune")


def write_pictures(run_dir: Path, history: list[dict], title: str, model=None, processor=None) -> None:
    """loss.png from the Trainer's log history; model.png (the diagram) when a model is given: drawn for Llava and
    the vlmtune type (composed models); other architectures get a log line saying it was not drawn."""
    from vlmtune.pictures.curves import training_curves

    training_curves(history, Path(run_dir) / "loss.png", title)
    if model is None:
        return
    from vlmtune.pictures.diagram import model_diagram

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if base.config.model_type in ("llava", "vlmtune"):
        model_diagram(base, processor, Path(run_dir) / "model.png")
    else:
        log.info("model.png is drawn for composed (llava / vlmtune) models, not for %s", base.config.model_type)
