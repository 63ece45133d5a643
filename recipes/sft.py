"""Stage 2, instruction tuning with TRL's SFTTrainer: LoRA (default), QLoRA or a full fine-tune of the LLM.

Run as `vlmtune sft [overrides]` or `accelerate launch recipes/sft.py [overrides]`.
The model starts from `init_from=<checkpoint>` (a previous stage), an existing HF VLM (`model=hf_vlm model.path=...`)
or the parts of `model.*` composed into <run_dir>/base (vlmtune.model.base). Writes <run_dir>/checkpoint (an adapter
directory under LoRA/QLoRA, a full checkpoint under peft=none) and, with `evaluate_at_end`, metrics.json and
predictions.jsonl.
"""

import hydra
from omegaconf import DictConfig

from vlmtune.errors import run_command
from vlmtune.hydra_setup import setup
from vlmtune.launch import launching

setup()


@hydra.main(config_path="../conf", config_name="sft", version_base="1.3")
@launching
def main(cfg: DictConfig) -> float | None:
    from vlmtune import tracking
    from vlmtune.data.streaming import check_streaming
    from vlmtune.data.training import training_data
    from vlmtune.eval.run import evaluate_checkpoint, held_out_records
    from vlmtune.memory import preflight
    from vlmtune.model.base import load_for_training, training_base
    from vlmtune.pictures.run import write_pictures
    from vlmtune.processes import is_main_process
    from vlmtune.runs import log, start_run
    from vlmtune.train.feature_cache import cache_vision_features
    from vlmtune.train.policy import quantization_for
    from vlmtune.train.probe import GenerationEval
    from vlmtune.train.sft import fit
    from vlmtune.train.stages import make_trainable, save_trained

    run = start_run(cfg, "sft")
    cfg = run.cfg
    check_streaming(cfg)

    base = training_base(run, cfg)
    model, processor = load_for_training(base, cfg, quantization_for(cfg, base))
    model, parameters = make_trainable(model, cfg)

    if cfg.vision_feature_cache:  # a frozen tower: epochs after the first read its features from disk
        cache = cache_vision_features(model, cfg.vision_feature_cache)
    train = training_data(cfg.data, processor, run.dir)
    preflight(model, processor, cfg, train.report.lengths)  # memory per device; refuses a run that cannot fit
    if not train.streamed:  # a stream's report is complete only when training ends
        run.record_data("train", train.report)
    facts = None
    if run.tracker is not None:  # git sha, system, data fingerprint (in memory; blank images included), parameters
        facts = tracking.log_run_facts(run.tracker, parameters=parameters, records=train.records, state=run.state)
    callbacks = list(train.callbacks)
    if cfg.eval_steps > 0:
        probe = held_out_records(cfg.data, run.dir)[: cfg.eval_samples]
        callbacks.append(GenerationEval(processor, probe, cfg.eval, cfg.eval_steps, run.state,
                                        table_rows=cfg.logger.log_samples))
    history = fit(model, processor, train.dataset, cfg, run.dir / "trainer", report_to=run.report_to,
                  preemption=run.preemption, callbacks=callbacks)
    if train.streamed:
        run.record_data("train", train.report)
    if cfg.vision_feature_cache:
        log.info("vision feature cache: %d images read from disk, %d encoded", cache["hits"], cache["misses"])

    checkpoint = save_trained(run, model, processor, "sft", facts, init_from=base)
    if is_main_process():
        write_pictures(run.dir, history, "sft (instruction tuning)")  # loss.png
    # Score the artifact as written (adapters merged the way any later user loads them), not the live model.
    metrics = evaluate_checkpoint(run, checkpoint) if cfg.evaluate_at_end and cfg.data.test else None
    run.finish()
    return metrics["accuracy"] if metrics else None  # the objective of a Hydra sweeper


if __name__ == "__main__":
    run_command(main)
