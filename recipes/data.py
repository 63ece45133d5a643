"""Look at data the way the model will: `vlmtune data inspect [overrides]` renders samples with supervised, masked
and image-token spans marked and their token counts; `vlmtune data check [overrides]` validates every sample and
image and prints a report (samples, images, length histogram, drops and errors by kind), exiting 1 on errors.

The processor comes from `init_from=<checkpoint>` or is built from `model.*` without loading the LLM's weights.
"""

import sys

import hydra
from omegaconf import DictConfig

from vlmtune.errors import run_command
from vlmtune.hydra_setup import setup

setup()


@hydra.main(config_path="../conf", config_name="data_tools", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from dataclasses import replace

    from transformers.utils import logging as hf_logging

    from vlmtune.data.errors import DataReport
    from vlmtune.data.inspect import render
    from vlmtune.data.lengths import fit_lengths
    from vlmtune.data.records import read_split
    from vlmtune.runs import validated

    hf_logging.disable_progress_bar()
    cfg = validated(cfg)  # the same validation as a real run
    if cfg.init_from:
        from transformers import AutoProcessor

        from vlmtune import register_auto_classes

        register_auto_classes()  # a `vlmtune` checkpoint's processor
        processor = AutoProcessor.from_pretrained(cfg.init_from)
    else:
        from vlmtune.model.compose import blueprint

        processor = blueprint(cfg.model).processor()

    if cfg.action == "inspect":
        data = replace(cfg.data, max_train_samples=cfg.samples, max_test_samples=cfg.samples)
        color = cfg.color == "always" or (cfg.color == "auto" and sys.stdout.isatty())
        for sample in read_split(data, cfg.split):
            print(render(sample, processor, color))
        return
    report = DataReport()
    data = replace(cfg.data, on_error="skip", verify_images="full")  # find every problem, not only the first
    samples = read_split(data, cfg.split, report)
    fit_lengths(samples, processor, max_length=data.max_length, truncation=data.truncation, on_error="skip",
                report=report)
    source = cfg.data.test if cfg.split == "test" else cfg.data.train or f"mixture of {len(cfg.data.mixture)} sources"
    print(f"{source} [{cfg.split}]\n{report.summary()}")
    for kind, examples in sorted(report.examples.items()):
        print(f"\n{kind}:\n  " + "\n  ".join(examples))
    if report.errors:
        sys.exit(1)


if __name__ == "__main__":
    run_command(main)
