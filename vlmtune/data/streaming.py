"""End-to-end streaming training data (`data.streaming=true`): a `datasets.IterableDataset` that is never
materialised.

Each source is read row by row (JSON / JSONL by vlmtune's reader, Parquet, `datasets` folders and hub ids by
`datasets` in streaming mode) and every row goes through the same steps as in memory, one at a time: format
conversion and image checks (`records.checked_samples`), then template rendering, true-length measurement and
truncation by whole turns (`lengths.fit_sample`). Bad samples raise the in-memory path's DataError, or are skipped and
counted in the `DataReport`, which is complete only when training ends. A mixture is `datasets.interleave_datasets`
over the sources' streams. Images are decoded in the collator (`DecodeImages`), i.e. only for the batches a process
trains on.

The stream repeats itself endlessly: training length is `optim.max_steps`, and a resumed run (which skips the
batches it already trained on by reading them again) sees exactly the batches an uninterrupted run would have,
whether or not the data ran out and started over before the checkpoint.

Several processes: TRL's SFTTrainer sets `dispatch_batches=False` for an IterableDataset and accelerate then gives
each process its own batches of this one stream (`IterableDatasetShard`: every process reads and checks the stream,
and keeps every N-th batch). Batches are therefore disjoint across processes at every step; each process's report
counts the whole stream as read so far.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from vlmtune.data.errors import DataError, DataReport
from vlmtune.data.images import load_image
from vlmtune.data.lengths import fit_sample, image_token_count, measure
from vlmtune.data.records import checked_samples, sample_features
from vlmtune.errors import ConfigError

log = logging.getLogger("vlmtune")


def check_streaming(cfg) -> None:
    """Refuse, before any heavy work, the options a stream cannot honour (each names its key)."""
    data, optim = cfg.data, cfg.optim
    if not data.streaming:
        return
    if optim.max_steps <= 0:
        raise ConfigError(f"data.streaming=true needs optim.max_steps > 0 (got {optim.max_steps}): a stream has no "
                          "length, so optim.epochs cannot say when training ends; set optim.max_steps=<steps>")
    if data.group_by_length:
        raise ConfigError("data.group_by_length=true needs every sample's length before training starts, which a "
                          "stream does not have; set data.group_by_length=false (or data.streaming=false)")
    if data.blank_images:
        raise ConfigError("data.blank_images=true is not supported with data.streaming=true; set data.streaming=false "
                          "for the blind baseline")


def _source_samples(source: dict[str, Any], data, processor, per_image: int | None,
                    report: DataReport) -> Iterator[dict[str, Any]]:
    """One pass over one source: checked, measured and fitted samples; bad ones raise or are counted."""
    kept = 0
    for sample in checked_samples(source["path"], image_root=source.get("image_root", data.image_root),
                                  fmt=source.get("format", data.format), on_error=data.on_error,
                                  split=source.get("split", data.split), verify_images=data.verify_images,
                                  max_image_pixels=data.max_image_pixels, streaming=True, report=report):
        try:
            fitted = fit_sample(sample, measure(sample, processor, per_image), processor, per_image,
                                max_length=data.max_length, truncation=data.truncation, report=report)
        except DataError as error:
            if data.on_error == "raise":
                raise
            report.add_error(error)
            fitted = None
        if fitted is None:  # counted as kept by the row checks, then skipped or dropped here
            report.kept -= 1
            report.images -= len(sample["images"])
            continue
        report.lengths.append(fitted["length"])
        kept += 1
        yield {k: fitted.get(k) for k in sample_features()}
    if not kept:  # also what keeps the endless repetition of an empty stream from spinning forever
        raise DataError(f"{source['path']}: no usable samples\n{report.summary()}", "empty")


def training_stream(data, processor, report: DataReport):
    """The training split (or mixture) as an endless `datasets.IterableDataset` of samples (messages, undecoded
    images, kind, length), read lazily; `report` counts what was read, skipped and dropped."""
    from datasets import IterableDataset, interleave_datasets

    sources = data.mixture or [{"path": data.train}]
    if sources[0]["path"] is None:
        raise ConfigError("data.train is not set (nor data.mixture)")
    per_image = image_token_count(processor)

    def generate(source: dict[str, Any]) -> Iterator[dict[str, Any]]:
        # A closure rather than a gen_kwargs entry: datasets copies gen_kwargs, and the report must be this one.
        yield from _source_samples(source, data, processor, per_image, report)

    parts = [IterableDataset.from_generator(generate, features=sample_features(), gen_kwargs={"source": source})
             for source in sources]
    if len(parts) == 1:
        stream = parts[0]
    else:
        weights = [float(source.get("weight", 1.0)) for source in sources]
        if min(weights) <= 0:
            raise ConfigError(f"data.mixture weights must be positive, got {weights}")
        stream = interleave_datasets(parts, probabilities=[w / sum(weights) for w in weights],
                                     seed=data.mixture_seed, stopping_strategy=data.mixture_stop)
    if data.max_train_samples:
        stream = stream.take(data.max_train_samples)
    if data.cache_dir:
        log.info("data.cache_dir does not apply to streaming: each sample is measured as it is read")
    # Endless: the Trainer stops at optim.max_steps, and a resume skips into the same sequence of batches.
    return stream.repeat(None)


class DecodeImages:
    """Wraps a collator: decodes each example's images (paths / bytes) with `load_image` just before collating."""

    def __init__(self, collator) -> None:
        self.collator = collator

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        return self.collator([{**e, "images": [load_image(image, f"sample {e.get('id')!r}") for image in e["images"]]}
                              for e in examples])

    def __getattr__(self, name: str):
        if name == "collator":  # not set yet (e.g. while unpickling)
            raise AttributeError(name)
        return getattr(self.collator, name)


def report_from_training_start(report: DataReport):
    """A callback that clears `report` when training starts: samples read before (the trainer's and the supervision
    check's peeks at the stream) are read again by the training loop and must not count twice."""
    from transformers import TrainerCallback

    class ResetReport(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            fresh = DataReport()
            for name in vars(fresh):
                setattr(report, name, getattr(fresh, name))

    return ResetReport()
