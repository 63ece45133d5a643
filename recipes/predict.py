"""Answer every question of a folder of images or a data file, batched, split across processes, resumable.

Run as `vlmtune predict checkpoint=<dir> input=<folder> question="..."` or `input=<file.jsonl>` (llava, sharegpt,
messages or vqa records), or `accelerate launch --multi_gpu --num_processes 2 recipes/predict.py ...`.
Writes <run_dir>/predictions.jsonl (or `output=`); rerunning with the same output skips the ids already answered.
"""

import hydra
from omegaconf import DictConfig

from vlmtune.errors import run_command
from vlmtune.hydra_setup import setup

setup()


@hydra.main(config_path="../conf", config_name="predict", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from pathlib import Path

    from vlmtune.infer.predict import input_records, predict
    from vlmtune.model.checkpoint import load_vlm
    from vlmtune.runs import is_main_process, log, start_run

    run = start_run(cfg, "predict")
    cfg = run.cfg
    records, report = input_records(cfg)  # bad input is reported before a model is loaded
    if is_main_process():
        run.record_data("input", report)
    model, processor = load_vlm(cfg.checkpoint, device=run.state.device)
    output = Path(cfg.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    counts = predict(model, processor, records, output, run.state, batch_size=cfg.batch_size,
                     max_new_tokens=cfg.answer.max_new_tokens, stop_strings=cfg.answer.stop_strings)
    log.info("predict: %(answered)d answered, %(skipped)d already in the output, %(total)d in all", counts)
    log.info("predict: answers in %s", output)
    run.finish()


if __name__ == "__main__":
    run_command(main)
