"""Serve checkpoints on a local web page: upload an image, ask, watch the answer stream, go on talking.

Run as `vlmtune serve runs=<run dir>` (every checkpoint under it, in a list to switch between) or
`vlmtune serve checkpoint=<dir>`; then open http://127.0.0.1:7860. Needs the `serve` extra (Gradio).
"""

import hydra
from omegaconf import DictConfig

from vlmtune.errors import run_command
from vlmtune.hydra_setup import setup

setup()


@hydra.main(config_path="../conf", config_name="serve", version_base="1.3")
def main(cfg: DictConfig) -> None:
    import os
    from pathlib import Path

    from vlmtune.errors import ConfigError, require
    from vlmtune.infer.webui import Models, build_app, find_checkpoints
    from vlmtune.runs import log, start_run

    require("gradio", "serve", "vlmtune serve")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves this machine
    run = start_run(cfg, "serve")
    cfg = run.cfg
    if cfg.checkpoint is None and cfg.runs is None:
        raise ConfigError("give checkpoint=<dir> or runs=<run directory> to serve")
    checkpoints = find_checkpoints(Path(cfg.runs)) if cfg.runs is not None else {}
    if cfg.checkpoint is not None:
        checkpoints = {cfg.checkpoint: Path(cfg.checkpoint), **checkpoints}
    if not checkpoints:
        raise ConfigError(f"runs={cfg.runs} holds no checkpoint (a folder with config.json or adapter_config.json)")
    first = next(iter(checkpoints))
    models = Models(checkpoints, run.state.device, cfg.answer)
    models.conversation(first)  # a checkpoint that cannot load fails here, before the page is up
    log.info("serve: %d checkpoint(s): %s", len(checkpoints), ", ".join(checkpoints))
    build_app(models, first).queue().launch(server_name=cfg.host, server_port=cfg.port or None, share=False)
    run.finish()


if __name__ == "__main__":
    run_command(main)
