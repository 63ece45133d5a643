"""Stage 2, instruction tuning with TRL's SFTTrainer: LoRA (default), QLoRA or a full fine-tune of the LLM.

Run as `vlmtune sft [overrides]` or `accelerate launch recipes/sft.py [overrides]`.
`init_from=<checkpoint>` continues from a previous stage; without it the model is an existing HF VLM
(`model=hf_vlm model.path=...`, its processor given a chat template with generation marks) or is composed from
`model.*` and its base saved next to the adapter. Writes <run_dir>/checkpoint (an adapter directory under
LoRA/QLoRA, a full checkpoint under peft=none) and, with `evaluate_at_end`, metrics.json and predictions.jsonl.
"""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from vlmtune.hydra_setup import setup

setup()


@hydra.main(config_path="../conf", config_name="sft", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    import torch

    from vlmtune import tracking
    from vlmtune.data.streaming import check_streaming
    from vlmtune.data.training import training_data
    from vlmtune.eval.run import evaluate_checkpoint, held_out_records
    from vlmtune.model.checkpoint import load_vlm, save_checkpoint
    from vlmtune.model.compose import compose
    from vlmtune.model.hf_vlm import model_path, prepare_for_training
    from vlmtune.model.parts import model_type_at
    from vlmtune.runs import is_main_process, log, start_run
    from vlmtune.train.feature_cache import cache_vision_features
    from vlmtune.train.fit import fit
    from vlmtune.train.policy import apply_policy, bnb_4bit_config, parameter_table
    from vlmtune.train.probe import GenerationEval

    run = start_run(cfg, "sft")
    cfg = run.cfg
    check_streaming(cfg)

    base = cfg.init_from
    if base is not None and Path(base).exists():
        base = Path(base).resolve()  # the adapter records its base: keep it valid from any working directory
    start_from_hf = base is None and cfg.model.path is not None
    if start_from_hf:  # an existing HF VLM (model=hf_vlm): the adapter records its directory or hub id as its base
        base = model_path(cfg.model.path)
    elif base is None:  # compose the parts; the adapter needs its base on disk
        base = run.dir / "base"
        if is_main_process() and not (base / "config.json").exists():  # a resumed run keeps its base
            save_checkpoint(*compose(cfg.model), base, run.provenance(stage="composed base"))
        run.wait_for_everyone()
    quantization = bnb_4bit_config(cfg.peft, model_type_at(base)) if cfg.policy.llm.mode == "qlora" else None
    if start_from_hf:
        model, processor = load_vlm(base, dtype=getattr(torch, cfg.model.dtype), quantization_config=quantization,
                                    what="model.path")
        prepare_for_training(model, processor, cfg.model.template)  # the chat template with generation marks
    else:
        model, processor = load_vlm(base, quantization_config=quantization, what="init_from")
    model = apply_policy(model, cfg.policy, cfg.peft)
    parameters = parameter_table(model, cfg.policy, cfg.optim, cfg.peft)
    log.info("parameters:\n%s", parameters)

    if cfg.vision_feature_cache:  # a frozen tower: epochs after the first read its features from disk
        cache = cache_vision_features(model, cfg.vision_feature_cache)
    train = training_data(cfg.data, processor, run.dir)
    if not train.streamed:  # a stream's report is complete only when training ends
        run.record_data("train", train.report)
    if run.tracker is not None:  # git sha, system, data fingerprint (in memory; blank images included), parameters
        facts = tracking.log_run_facts(run.tracker, parameters=parameters, records=train.records, state=run.state)
    callbacks = []
    if cfg.eval_steps > 0:
        probe = held_out_records(cfg.data, run.dir)[: cfg.eval_samples]
        callbacks.append(GenerationEval(processor, probe, cfg.eval, cfg.eval_steps, run.state,
                                        table_rows=cfg.logger.log_samples))
    fit(model, processor, train.dataset, cfg, run.dir / "trainer", report_to=run.report_to,
        callbacks=[*callbacks, *train.callbacks])
    if train.streamed:
        run.record_data("train", train.report)
    if cfg.vision_feature_cache:
        log.info("vision feature cache: %d images read from disk, %d encoded", cache["hits"], cache["misses"])

    if is_main_process():
        save_checkpoint(model, processor, run.dir / "checkpoint", run.provenance(init_from=str(base)))
        log.info("sft: checkpoint written to %s", run.dir / "checkpoint")
        if run.tracker is not None and cfg.logger.log_checkpoint:
            tracking.log_checkpoint(run.tracker, run.dir / "checkpoint", kind="sft", metadata={
                "init_from": str(base), **{k: facts.get(k) for k in ("git/sha", "data/train/fingerprint")}})
    run.wait_for_everyone()
    # Score the artifact as written (adapters merged the way any later user loads them), not the live model.
    metrics = evaluate_checkpoint(run, run.dir / "checkpoint") if cfg.evaluate_at_end and cfg.data.test else None
    run.finish()
    return metrics["accuracy"] if metrics else None  # the objective of a Hydra sweeper


if __name__ == "__main__":
    main()
