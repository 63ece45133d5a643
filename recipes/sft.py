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
    from vlmtune.model.checkpoint import save_checkpoint
    from vlmtune.processes import is_main_process
    from vlmtune.runs import log, start_run
    from vlmtune.train.feature_cache import cache_vision_features
    from vlmtune.train.policy import apply_policy, parameter_table, quantization_for
    from vlmtune.train.probe import GenerationEval
    from vlmtune.train.sft import fit
    from vlmtune.train.sharded import full_weights

    run = start_run(cfg, "sft")
    cfg = run.cfg
    check_streaming(cfg)

    base = training_base(run, cfg)
    model, processor = load_for_training(base, cfg, quantization_for(cfg, base))
    model = apply_policy(model, cfg.policy, cfg.peft)
    parameters = parameter_table(model, cfg.policy, cfg.optim, cfg.peft)
    log.info("parameters:\n%s", parameters)

    if cfg.vision_feature_cache:  # a frozen tower: epochs after the first read its features from disk
        cache = cache_vision_features(model, cfg.vision_feature_cache)
    train = training_data(cfg.data, processor, run.dir)
    preflight(model, processor, cfg, train.report.lengths)  # memory per device; refuses a run that cannot fit
    if not train.streamed:  # a stream's report is complete only when training ends
        run.record_data("train", train.report)
    if run.tracker is not None:  # git sha, system, data fingerprint (in memory; blank images included), parameters
        facts = tracking.log_run_facts(run.tracker, parameters=parameters, records=train.records, state=run.state)
    callbacks = list(train.callbacks)
    if cfg.eval_steps > 0:
        probe = held_out_records(cfg.data, run.dir)[: cfg.eval_samples]
        callbacks.append(GenerationEval(processor, probe, cfg.eval, cfg.eval_steps, run.state,
                                        table_rows=cfg.logger.log_samples))
    fit(model, processor, train.dataset, cfg, run.dir / "trainer", report_to=run.report_to,
        preemption=run.preemption, callbacks=callbacks)
    if train.streamed:
        run.record_data("train", train.report)
    if cfg.vision_feature_cache:
        log.info("vision feature cache: %d images read from disk, %d encoded", cache["hits"], cache["misses"])

    with full_weights(model) as weights:  # ZeRO-3 / FSDP2: gathered, written by rank 0
        if is_main_process():
            save_checkpoint(model, processor, run.dir / "checkpoint", run.provenance(init_from=base),
                            weights)
            log.info("sft: checkpoint written to %s", run.dir / "checkpoint")
            if run.tracker is not None and cfg.logger.log_checkpoint:
                tracking.log_checkpoint(run.tracker, run.dir / "checkpoint", kind="sft", metadata={
                    "init_from": base, **{k: facts.get(k) for k in ("git/sha", "data/train/fingerprint")}})
    run.wait_for_everyone()
    # Score the artifact as written (adapters merged the way any later user loads them), not the live model.
    metrics = evaluate_checkpoint(run, run.dir / "checkpoint") if cfg.evaluate_at_end and cfg.data.test else None
    run.finish()
    return metrics["accuracy"] if metrics else None  # the objective of a Hydra sweeper


if __name__ == "__main__":
    run_command(main)
