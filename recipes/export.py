"""Write a checkpoint for serving: a LoRA/QLoRA adapter merged into its full-precision base (a full checkpoint is
rewritten as it is), with everything a serving engine reads.

Run as `vlmtune export checkpoint=<dir> [results=<evaluate run>/results.json] [run_dir=<out>]`. The result is a plain
transformers checkpoint (`llava` for the MLP projector): safetensors weights, config.json, generation_config.json,
the processor (tokenizer, image processor, chat_template.jinja), a model card (README.md, with the evaluation's
metrics when `results` is given) and provenance. No PEFT needed to load it. A quantized checkpoint is refused: it
is served as saved.
"""

import hydra
from omegaconf import DictConfig

from vlmtune.errors import run_command
from vlmtune.hydra_setup import setup

setup()


@hydra.main(config_path="../conf", config_name="export", version_base="1.3")
def main(cfg: DictConfig) -> None:
    import json
    from pathlib import Path

    from vlmtune.errors import CheckpointError, ConfigError
    from vlmtune.model.checkpoint import is_adapter, load_vlm, save_checkpoint
    from vlmtune.quant.saved import quant_method
    from vlmtune.runs import log, start_run

    run = start_run(cfg, "export")
    source = run.cfg.checkpoint
    if (method := quant_method(source)) is not None:
        raise CheckpointError(f"checkpoint={source} is quantized ({method}): export writes a full-precision serving "
                              "checkpoint; a quantized variant is servable as saved (chat, predict, serve, "
                              "from_pretrained), or export the full-precision checkpoint it was quantized from")
    evaluation = None
    if run.cfg.results is not None:
        results = Path(run.cfg.results)
        if not results.is_file():
            raise ConfigError(f"results={results} is not a file; give an evaluate run's results.json")
        evaluation = json.loads(results.read_text())
    model, processor = load_vlm(source, what="checkpoint")  # an adapter is merged into its full-precision base
    origin = "merged_from" if is_adapter(source) else "exported_from"
    provenance = run.provenance(**{origin: str(source)}, evaluation=evaluation)
    out = save_checkpoint(model, processor, run.dir / "checkpoint", provenance)
    log.info("export: serving checkpoint written to %s", out)
    run.finish()


if __name__ == "__main__":
    run_command(main)
