"""The pictures a training recipe leaves in its run directory: loss.png and, for a composed model, model.png."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("vlmtune")


def write_pictures(run_dir: Path, history: list[dict], title: str, model=None, processor=None) -> None:
    """loss.png from the Trainer's log history; model.png (the diagram) when a model is given: drawn for Llava and
    the vlmtune type (composed models); other architectures get a log line saying it was not drawn.

    Call it on every process: the diagram's one forward pass must run on all of them when the weights are sharded
    (ZeRO-3 gathers each layer's weights collectively); the main process draws.
    """
    from vlmtune.pictures.curves import training_curves
    from vlmtune.pictures.diagram import model_diagram, model_stages
    from vlmtune.processes import is_main_process

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    drawn = base is not None and base.config.model_type in ("llava", "vlmtune")
    stages = model_stages(base, processor) if drawn else None
    if not is_main_process():
        return
    training_curves(history, Path(run_dir) / "loss.png", title)
    if drawn:
        model_diagram(stages, base.config, Path(run_dir) / "model.png")
    elif base is not None:
        log.info("model.png is drawn for composed (llava / vlmtune) models, not for %s", base.config.model_type)
