"""Quantize a checkpoint with bitsandbytes (8-bit and 4-bit, LLM only) and compare it with full precision.

Run as `vlmtune quantize checkpoint=<dir> [overrides]`. A LoRA adapter directory is merged into its base first.
Writes <run_dir>/quantize.json (and a printed table): checkpoint bytes, in-memory bytes after loading and test
accuracy per variant, and predictions_<variant>.jsonl; with `save`, each quantized model as <run_dir>/<variant>/.
"""

import hydra
from omegaconf import DictConfig

from vlmtune.errors import run_command
from vlmtune.hydra_setup import setup

setup()


@hydra.main(config_path="../conf", config_name="quantize", version_base="1.3")
def main(cfg: DictConfig) -> None:
    import json
    import tempfile
    from pathlib import Path

    from vlmtune.eval.run import evaluate_model, held_out_records
    from vlmtune.model.base import full_checkpoint
    from vlmtune.model.checkpoint import load_vlm, save_checkpoint
    from vlmtune.model.parts import model_type_at
    from vlmtune.quantize import bnb_config, checkpoint_bytes, variant_name
    from vlmtune.runs import log, start_run

    run = start_run(cfg, "quantize")
    cfg = run.cfg
    source = full_checkpoint(run, cfg.checkpoint)  # bitsandbytes quantizes at load time: a full checkpoint on disk

    records = held_out_records(cfg.data, run.dir)
    model_type = model_type_at(source)  # which modules stay in full precision depends on the architecture
    table = []
    for bits in [None, *cfg.bits]:
        name = variant_name(bits, cfg.quant_type)
        quantization = None if bits is None else bnb_config(bits, cfg.quant_type, model_type=model_type)
        model, processor = load_vlm(source, quantization_config=quantization)
        size = checkpoint_bytes(source)
        if bits is not None:
            # Saved before any forward pass: on CPU, bitsandbytes repacks 4-bit weights at the first forward (block
            # scales kept in bfloat16) and re-quantizes them when saving, so a model saved after evaluation is not
            # the one that was evaluated. Saved first, reloading it gives exactly the answers below. Without
            # `save`, it is written to a scratch folder only to measure its own size.
            with tempfile.TemporaryDirectory(dir=run.dir) as scratch:
                out = save_checkpoint(model, processor, run.dir / name if cfg.save else Path(scratch) / name,
                                      run.provenance(variant=name))
                size = checkpoint_bytes(out)
        rows, metrics = evaluate_model(model, processor, records, cfg.eval)
        # Per variant, so a saved int8 / nf4 checkpoint's `vlmtune evaluate` can be checked answer by answer.
        (run.dir / f"predictions_{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        table.append({"variant": name, "checkpoint_bytes": size, "memory_bytes": model.get_memory_footprint(),
                      "accuracy": metrics["accuracy"]})
        del model

    (run.dir / "quantize.json").write_text(json.dumps(table, indent=2))
    lines = [f"{'variant':<8} {'checkpoint MB':>14} {'memory MB':>10} {'accuracy':>9}"]
    lines += [f"{r['variant']:<8} {r['checkpoint_bytes'] / 2**20:>14.3f} {r['memory_bytes'] / 2**20:>10.3f} "
              f"{r['accuracy']:>9.3f}" for r in table]
    log.info("quantization on %d test samples:\n%s", len(records), "\n".join(lines))
    if run.tracker is not None:
        import wandb

        run.log({"quantize/table": wandb.Table(columns=list(table[0]), data=[list(r.values()) for r in table])})
    run.finish()


if __name__ == "__main__":
    run_command(main)
