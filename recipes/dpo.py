"""Stage 3, preference tuning with TRL's DPOTrainer: teach a fine-tuned VLM to prefer one answer over another.

Run as `vlmtune dpo init_from=<checkpoint> [overrides]` or `accelerate launch recipes/dpo.py init_from=... [overrides]`.
`init_from` is a full checkpoint or an adapter directory (an sft run's `checkpoint/`). An adapter is merged into its
base and the merged model is saved as <run_dir>/base, the base that the new DPO adapter records. The data are
preference pairs (image, prompt, chosen, rejected; vlmtune/data/preferences.py), by default the ones `vlmtune synth`
writes. Under LoRA/QLoRA (default) the reference model is the policy with its adapter disabled, i.e. exactly the
starting model; under peft=none it is a frozen copy. Writes <run_dir>/checkpoint (an adapter directory, or a full
checkpoint under peft=none) and, with `evaluate_at_end`, metrics.json: the chosen-minus-rejected log-probability
margins on data.test before and after, and DPO's implicit reward margin.
"""

import json
from pathlib import Path

import hydra
from omegaconf import DictConfig

from vlmtune.errors import run_command
from vlmtune.hydra_setup import setup
from vlmtune.launch import launching

setup()


@hydra.main(config_path="../conf", config_name="dpo", version_base="1.3")
@launching
def main(cfg: DictConfig) -> float | None:
    from vlmtune.data.errors import DataReport
    from vlmtune.data.preferences import read_preference_split, to_preference_dataset
    from vlmtune.errors import ConfigError
    from vlmtune.model.base import load_for_training, training_base
    from vlmtune.model.checkpoint import load_vlm
    from vlmtune.processes import is_main_process
    from vlmtune.runs import log, start_run
    from vlmtune.train.dpo import fit_dpo, score_preferences
    from vlmtune.train.policy import quantization_for
    from vlmtune.train.stages import make_trainable, save_trained

    run = start_run(cfg, "dpo")
    cfg = run.cfg
    if cfg.eval_steps > 0:
        raise ConfigError("eval_steps: dpo has no in-training evaluation; evaluate_at_end scores the margins")

    base = training_base(run, cfg)  # an adapter given as init_from is merged into <run_dir>/base
    model, processor = load_for_training(base, cfg, quantization_for(cfg, base))
    lora = {cfg.policy.vision.mode, cfg.policy.projector.mode, cfg.policy.llm.mode} & {"lora", "qlora"}
    # TRL's reference: the adapter disabled under LoRA (nothing to load), a frozen copy for a full fine-tune.
    ref_model = None if lora else load_vlm(base, what="init_from")[0]
    model, _ = make_trainable(model, cfg)

    report = DataReport()
    pairs = read_preference_split(cfg.data, "train", report)
    run.record_data("train", report)
    fit_dpo(model, processor, to_preference_dataset(pairs), cfg, run.dir / "trainer", report_to=run.report_to,
            preemption=run.preemption, ref_model=ref_model)

    init = Path(cfg.init_from).resolve()
    checkpoint = save_trained(run, model, processor, "dpo", init_from=str(init))
    metrics = None
    if cfg.evaluate_at_end and cfg.data.test and is_main_process():
        # Score the artifacts as written: the starting checkpoint (DPO's reference) against the trained one.
        held_out = read_preference_split(cfg.data, "test")
        metrics = score_preferences(init, checkpoint, held_out, cfg.beta, cfg.eval.batch_size)
        (run.dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
        run.log({"test/margin_before": metrics["before"]["margin"], "test/margin": metrics["after"]["margin"],
                 "test/preference_accuracy": metrics["after"]["accuracy"],
                 "test/reward_margin": metrics["reward_margin"]})
        log.info("dpo: held-out margin %.3f -> %.3f nats, preference accuracy %.3f -> %.3f",
                 metrics["before"]["margin"], metrics["after"]["margin"],
                 metrics["before"]["accuracy"], metrics["after"]["accuracy"])
    run.finish()
    return metrics["after"]["margin"] if metrics else None  # the objective of a Hydra sweeper


if __name__ == "__main__":
    run_command(main)
