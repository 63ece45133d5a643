"""Merge a LoRA/QLoRA adapter into its full-precision base and write a standard checkpoint.

Run as `vlmtune export checkpoint=<adapter dir> [run_dir=<out>]`. The result is a plain transformers checkpoint
(`llava` for the MLP projector) with the processor, model card and provenance: no PEFT needed to load it.
"""

import hydra
from omegaconf import DictConfig

from vlmtune.errors import run_command
from vlmtune.hydra_setup import setup

setup()


@hydra.main(config_path="../conf", config_name="export", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from vlmtune.errors import CheckpointError
    from vlmtune.model.checkpoint import is_adapter, load_vlm, save_checkpoint
    from vlmtune.runs import log, start_run

    run = start_run(cfg, "export")
    source = run.cfg.checkpoint
    if not is_adapter(source):
        raise CheckpointError(f"checkpoint={source} is not an adapter directory (no adapter_config.json): nothing to "
                              "merge; a full checkpoint (also a quantized one) is already loadable as it is")
    model, processor = load_vlm(source, what="checkpoint")  # merged into the full-precision base
    out = save_checkpoint(model, processor, run.dir / "checkpoint", run.provenance(merged_from=str(source)))
    log.info("export: merged checkpoint written to %s", out)
    run.finish()


if __name__ == "__main__":
    run_command(main)
