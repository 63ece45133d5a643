"""Quantize a checkpoint with each requested backend and measure every variant against full precision.

Run as `vlmtune quantize checkpoint=<dir> variants=[int8,nf4,quanto_int4,...]`. A LoRA adapter directory is merged
into its base first. Each variant is saved as <run_dir>/<variant>/, reloaded from there, and measured in this run:
bytes on disk, load time, peak memory, accuracy and its delta, latency and tokens/s at batch 1 and batched.
Writes quantize.json, quantize.md, predictions_<variant>.jsonl and a W&B table.
"""

import hydra
from omegaconf import DictConfig

from vlmtune.errors import run_command
from vlmtune.hydra_setup import setup

setup()


@hydra.main(config_path="../conf", config_name="quantize", version_base="1.3")
def main(cfg: DictConfig) -> None:
    import json

    from transformers import AutoProcessor

    from vlmtune import register_auto_classes
    from vlmtune.data.records import read_split
    from vlmtune.errors import ConfigError
    from vlmtune.eval.run import held_out_records
    from vlmtune.model.base import full_checkpoint
    from vlmtune.model.checkpoint import save_checkpoint, write_card_and_provenance
    from vlmtune.model.parts import model_type_at
    from vlmtune.progress import track
    from vlmtune.quant.measure import markdown, measure
    from vlmtune.quant.variants import Job, require_variant, save_quanto
    from vlmtune.runs import log, start_run

    register_auto_classes()  # every backend loads the checkpoint through the Auto classes, a `vlmtune` one too
    run = start_run(cfg, "quantize")
    cfg = run.cfg
    variants = {name: require_variant(name) for name in cfg.variants}  # a missing extra stops before any work
    source = full_checkpoint(run, cfg.checkpoint)  # the backends quantize a full checkpoint on disk
    records = held_out_records(cfg.data, run.dir)
    calibration = read_split(cfg.data, "train")[: cfg.calibration_samples] if any(
        v.calibrated for v in variants.values()) else None
    model_type = model_type_at(source)
    device = run.state.device

    def measured(name: str, path, backend: str) -> dict:
        row, rows, model = measure(path, records, cfg.eval, latency_samples=cfg.latency_samples, device=device)
        (run.dir / f"predictions_{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        if name != "fp32" and not (path / "README.md").exists():  # auto-round wrote the directory itself
            write_card_and_provenance(model, path, run.provenance(variant=name))
        return {"variant": name, "backend": backend, **row}

    table = [measured("fp32", source, "none")]
    for name, variant in track(list(variants.items()), "quantization", "variants"):
        job = Job(source, model_type, run.dir / name, cfg.group_size, calibration)
        try:
            built = variant.build(job)
        except Exception as err:  # e.g. torchao int4 without a kernel for this device
            raise ConfigError(f"quantize variant {name!r} ({variant.backend}) failed on {device}: "
                              f"{type(err).__name__}: {err}; leave it out of variants=") from err
        if not variant.saves_itself:
            # Saved before any forward pass: bitsandbytes repacks 4-bit weights on the CPU at the first forward and
            # re-quantizes them on save, so a model saved after running is not the model that ran.
            save = save_quanto if variant.backend == "quanto" else save_checkpoint
            save(built, AutoProcessor.from_pretrained(source), job.out_dir, run.provenance(variant=name))
        del built
        table.append(measured(name, job.out_dir, variant.backend))
    for row in table:
        row["accuracy_delta"] = row["accuracy"] - table[0]["accuracy"]

    (run.dir / "quantize.json").write_text(json.dumps(table, indent=2))
    (run.dir / "quantize.md").write_text(markdown(table))
    log.info("quantization on %d test questions (%s):\n%s", len(records), device, markdown(table))
    if run.tracker is not None:
        import wandb

        run.log({"quantize/table": wandb.Table(columns=list(table[0]), data=[list(r.values()) for r in table])})
    run.finish()


if __name__ == "__main__":
    run_command(main)
