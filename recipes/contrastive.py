"""Contrastive image-text pretraining (CLIP / SigLIP): a dual encoder learns one space for images and captions.

Run as `vlmtune contrastive [overrides]`, on several processes with `launcher=ddp launcher.num_processes=N` (or
`accelerate launch --multi_gpu --num_processes N recipes/contrastive.py`).
`model.path=<CLIP/SigLIP checkpoint>` trains that pair; otherwise `model/vision` and `model/text` are joined by new
projection heads. Writes <run_dir>/checkpoint (the dual encoder), <run_dir>/vision (its vision tower: an ordinary HF
vision checkpoint for `model.vision.path=`), metrics.json (held-out recall and zero-shot accuracy before and after),
and pictures: loss.png, similarity.png, attention.png.
"""

import hydra
from omegaconf import DictConfig

from vlmtune.errors import run_command
from vlmtune.hydra_setup import setup
from vlmtune.launch import launching

setup()


@hydra.main(config_path="../conf", config_name="contrastive", version_base="1.3")
@launching
def main(cfg: DictConfig) -> float | None:
    from vlmtune.contrastive.data import caption_pairs
    from vlmtune.contrastive.loss import LOSSES, ContrastiveObjective
    from vlmtune.contrastive.model import (
        apply_dual_policy,
        compose_dual,
        load_dual,
        merged,
        parameter_table,
        save_dual,
        save_vision_tower,
    )
    from vlmtune.contrastive.report import evaluate_pairs, write_pictures
    from vlmtune.contrastive.train import fit_contrastive, refuse_sharding
    from vlmtune.data.errors import DataReport
    from vlmtune.data.records import read_split
    from vlmtune.pictures.curves import training_curves
    from vlmtune.processes import is_main_process
    from vlmtune.runs import log, start_run

    run = start_run(cfg, "contrastive")
    cfg = run.cfg
    refuse_sharding(cfg.launcher)
    LOSSES.get(cfg.loss)  # a misspelt loss fails before anything loads
    if cfg.model.path:
        dual, processor, _ = load_dual(cfg.model.path)
    else:
        dual, processor = compose_dual(cfg.model, cfg.loss)
    report = DataReport()
    pairs = caption_pairs(read_split(cfg.data, "train", report), str(cfg.data.train))
    run.record_data("train", report)
    held_out = read_split(cfg.data, "test") if cfg.evaluate_at_end and cfg.data.test else None
    before = evaluate_pairs(run, dual, processor, held_out) if held_out else None

    dual = apply_dual_policy(dual, cfg.policy, cfg.peft)
    log.info("parameters:\n%s", parameter_table(dual))
    objective = ContrastiveObjective(dual, cfg.loss)
    history = fit_contrastive(objective, pairs, processor, cfg, run.dir / "trainer", report_to=run.report_to,
                              preemption=run.preemption)
    dual = merged(dual)
    bias = float(objective.bias) if objective.bias is not None else None

    if is_main_process():
        provenance = run.provenance()
        save_dual(dual, processor, run.dir / "checkpoint", provenance, cfg.loss, bias)
        save_vision_tower(dual, processor, run.dir / "vision", provenance)
        log.info("contrastive: dual encoder in %s, vision tower in %s", run.dir / "checkpoint", run.dir / "vision")
        training_curves(history, run.dir / "loss.png", f"contrastive ({cfg.loss} loss)")
        write_pictures(dual, processor, caption_pairs(held_out, str(cfg.data.test)) if held_out else pairs, run.dir)
    run.wait_for_everyone()
    metrics = evaluate_pairs(run, dual, processor, held_out, before=before, write=True) if held_out else None
    run.finish()
    return metrics["image_to_text/recall@1"] if metrics else None  # what a sweeper maximises


if __name__ == "__main__":
    run_command(main)
