"""Stage 1, projector alignment: compose vision encoder + new projector + LLM (or load an existing VLM with
`model.path`), train only the projector on captions.

Run as `vlmtune pretrain [overrides]` or `accelerate launch recipes/pretrain.py [overrides]`.
Writes <run_dir>/checkpoint: a standard transformers checkpoint that `sft init_from=` continues from.
"""

import hydra
from omegaconf import DictConfig

from vlmtune.errors import run_command
from vlmtune.hydra_setup import setup
from vlmtune.launch import launching

setup()


@hydra.main(config_path="../conf", config_name="pretrain", version_base="1.3")
@launching
def main(cfg: DictConfig) -> None:
    from vlmtune import tracking
    from vlmtune.data.streaming import check_streaming
    from vlmtune.data.training import training_data
    from vlmtune.memory import preflight
    from vlmtune.model.compose import compose
    from vlmtune.model.hf_vlm import load_hf_vlm
    from vlmtune.pictures.run import write_pictures
    from vlmtune.runs import log, start_run
    from vlmtune.train.feature_cache import cache_vision_features
    from vlmtune.train.sft import fit
    from vlmtune.train.stages import make_trainable, save_trained

    run = start_run(cfg, "pretrain")
    cfg = run.cfg
    check_streaming(cfg)

    # The whole model is saved at the end, so nothing needs a base on disk: compose (or load) in memory.
    model, processor = load_hf_vlm(cfg.model) if cfg.model.path else compose(cfg.model)
    model, parameters = make_trainable(model, cfg)

    captions = training_data(cfg.data, processor, run.dir)
    preflight(model, processor, cfg, captions.report.lengths)  # memory per device; refuses a run that cannot fit
    if not captions.streamed:  # a stream's report is complete only when training ends
        run.record_data("train", captions.report)
    facts = None
    if run.tracker is not None:  # git sha, system, data fingerprint (in memory), parameter table: W&B summary
        facts = tracking.log_run_facts(run.tracker, parameters=parameters, records=captions.records,
                                       state=run.state)
    if cfg.vision_feature_cache:  # the tower is frozen: later epochs read its features from disk
        cache = cache_vision_features(model, cfg.vision_feature_cache)
    history = fit(model, processor, captions.dataset, cfg, run.dir / "trainer", report_to=run.report_to,
                  preemption=run.preemption, callbacks=captions.callbacks)
    if captions.streamed:
        run.record_data("train", captions.report)
    if cfg.vision_feature_cache:
        log.info("vision feature cache: %d images read from disk, %d encoded", cache["hits"], cache["misses"])

    save_trained(run, model, processor, "pretrain", facts)
    write_pictures(run.dir, history, "pretrain (projector alignment)", model, processor)  # loss.png, model.png
    run.finish()


if __name__ == "__main__":
    run_command(main)
