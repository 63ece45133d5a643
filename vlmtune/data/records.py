"""Samples for training and evaluation: read any supported source and format, check it, count what is wrong.

`read_samples` turns a data file (or `datasets` dataset) into canonical samples (see formats.py), checks every
sample and its images, and applies `data.on_error`: `raise` stops at the first problem with a message naming the
file and sample; `skip` leaves the sample out and counts it in the `DataReport`. `to_dataset` makes the
`datasets.Dataset` (`messages` + `images`) that TRL's vision collator trains on; images are decoded on access by
`load_image`, which converts every mode to 8-bit RGB.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from vlmtune.data.errors import DataError, DataReport
from vlmtune.data.formats import to_sample
from vlmtune.data.images import MAX_PIXELS, check_image_header, load_image
from vlmtune.data.sources import read_rows
from vlmtune.errors import ConfigError


def read_samples(
    source: str | Path,
    *,
    image_root: str | Path | None = None,
    fmt: str = "auto",
    on_error: str = "raise",
    limit: int | None = None,
    split: str = "train",
    verify_images: str = "header",
    max_image_pixels: int = MAX_PIXELS,
    streaming: bool = False,
    report: DataReport | None = None,
    convert: Callable[[Any, str, Path], dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Canonical samples from `source`; bad samples raise or (on_error=skip) are counted in `report` and left out.

    `convert(row, where, image_root)` turns one row into a sample (default: `to_sample` with `fmt`; the DPO reader
    passes its preference-pair converter): reading, image checks, the error policy and the report are shared.
    """
    report = report if report is not None else DataReport()
    samples = []
    for sample in checked_samples(source, image_root=image_root, fmt=fmt, on_error=on_error, split=split,
                                  verify_images=verify_images, max_image_pixels=max_image_pixels,
                                  streaming=streaming, report=report, convert=convert, limit=limit):
        samples.append(sample)
    if not samples:
        raise DataError(f"{source}: no usable samples\n{report.summary()}", "empty")
    return samples


def check_row(row: Any, where: str, root: Path, *, fmt: str = "auto", verify_images: str = "header",
              max_image_pixels: int = MAX_PIXELS,
              convert: Callable[[Any, str, Path], dict[str, Any]] | None = None) -> dict[str, Any]:
    """One row (or the DataError its reading gave) -> a checked canonical sample, or the DataError that names it."""
    if isinstance(row, DataError):
        raise row
    sample = convert(row, where, root) if convert else to_sample(row, fmt, where, root)
    if sample["id"] is None:
        sample["id"] = where  # a stable name for evaluation and error messages
    for image in sample["images"]:
        if verify_images == "full":
            load_image(image, f"{where}, sample {sample['id']!r}", max_image_pixels)
        else:
            check_image_header(image, f"{where}, sample {sample['id']!r}", max_image_pixels)
    return sample


def checked_samples(
    source: str | Path,
    *,
    image_root: str | Path | None = None,
    fmt: str = "auto",
    on_error: str = "raise",
    split: str = "train",
    verify_images: str = "header",
    max_image_pixels: int = MAX_PIXELS,
    streaming: bool = False,
    report: DataReport,
    convert: Callable[[Any, str, Path], dict[str, Any]] | None = None,
    limit: int | None = None,
) -> Iterator[dict[str, Any]]:
    """The checked samples of `source` one at a time, as they are read; the error policy applied and counted in
    `report`. Shared by the in-memory reader (`read_samples`) and the streaming pipeline (streaming.py)."""
    path = Path(source)
    root = Path(image_root) if image_root else (path.parent if path.is_file() else path)
    kept = 0
    for where, row in read_rows(source, split, streaming):
        if limit is not None and kept >= limit:
            break
        report.samples += 1
        try:
            sample = check_row(row, where, root, fmt=fmt, verify_images=verify_images,
                               max_image_pixels=max_image_pixels, convert=convert)
        except DataError as error:
            if on_error == "raise":
                raise
            report.add_error(error)
            continue
        kept += 1
        report.kept += 1
        report.images += len(sample["images"])
        yield sample


def read_split(data, which: str, report: DataReport | None = None) -> list[dict[str, Any]]:
    """The `train` or `test` split that a DataConfig names, read with its settings (a weighted mixture for `train`
    when `data.mixture` lists sources)."""
    if which == "train" and data.mixture:
        return read_mixture(data, report)
    source = data.train if which == "train" else data.test
    if source is None:
        raise ConfigError(f"data.{which} is not set" + (" (nor data.mixture)" if which == "train" else ""))
    limit = data.max_train_samples if which == "train" else data.max_test_samples
    return read_samples(source, image_root=data.image_root, fmt=data.format, on_error=data.on_error, limit=limit,
                        split=data.split if which == "train" else data.test_split, streaming=data.streaming,
                        verify_images=data.verify_images, max_image_pixels=data.max_image_pixels, report=report)


def read_mixture(data, report: DataReport | None = None) -> list[dict[str, Any]]:
    """`data.mixture` sources interleaved by `datasets.interleave_datasets` with their weights as probabilities.

    Each source has its own path, format, split and image root; sampling is seeded (`data.mixture_seed`) and stops
    when the first source runs out (`first_exhausted`) or when all have (`all_exhausted`, oversampling the rest).
    """
    from datasets import Dataset, interleave_datasets

    sources, parts, weights = [], [], []
    for source in data.mixture:
        samples = read_samples(source["path"], image_root=source.get("image_root", data.image_root),
                               fmt=source.get("format", data.format), on_error=data.on_error,
                               split=source.get("split", data.split), streaming=data.streaming,
                               verify_images=data.verify_images, max_image_pixels=data.max_image_pixels,
                               report=report)
        # Interleave (source, index) pairs: the samples themselves (bytes, PIL images) stay as they are.
        parts.append(Dataset.from_dict({"source": [len(sources)] * len(samples), "index": list(range(len(samples)))}))
        sources.append(samples)
        weights.append(float(source.get("weight", 1.0)))
    if min(weights) <= 0:
        raise ConfigError(f"data.mixture weights must be positive, got {weights}")
    mixed = interleave_datasets(parts, probabilities=[w / sum(weights) for w in weights], seed=data.mixture_seed,
                                stopping_strategy=data.mixture_stop)
    samples = [sources[s][i] for s, i in zip(mixed["source"], mixed["index"], strict=True)]
    return samples[: data.max_train_samples] if data.max_train_samples else samples


def blank_images(records: list[dict], out_dir: str | Path) -> list[dict]:
    """Swap every image for one uniform grey image: the blind baseline, same text and model, nothing to see.

    The grey image has the size of the first image, is written to `out_dir/blank.png`, and is used for training
    and testing alike, so the baseline measures what the text alone gives away.
    """
    from PIL import Image

    first = next((r["images"][0] for r in records if r["images"]), None)
    if first is None:
        return records
    size = load_image(first, "blank_images").size
    blank = Path(out_dir) / "blank.png"
    if not blank.exists():  # every rank may get here: write through a private file, then rename
        blank.parent.mkdir(parents=True, exist_ok=True)
        private = blank.with_name(f".blank-{os.getpid()}.png")
        Image.new("RGB", size, (128, 128, 128)).save(private)
        os.replace(private, blank)
    return [{**r, "images": [str(blank)] * len(r["images"])} for r in records]


def _decode_images(batch: dict[str, list]) -> dict[str, list]:
    if "images" not in batch:  # a single column was asked for (e.g. the Trainer's `length` for grouping)
        return batch
    batch["images"] = [[load_image(image, f"sample {sample_id!r}") for image in images]
                       for sample_id, images in zip(batch["id"], batch["images"], strict=True)]
    return batch


def sample_features():
    """The `datasets.Features` of training samples, in memory or streamed: images stay undecoded (path / bytes)."""
    from datasets import Features, Image, List, Value

    part = {"type": Value("string"), "text": Value("string")}
    return Features({
        "id": Value("string"),
        "messages": List({"role": Value("string"), "content": List(part)}),
        "images": List(Image(decode=False)),
        "kind": Value("string"),
        "length": Value("int64"),  # true tokens (image tokens included), when measured: for length grouping
    })


def to_dataset(records: list[dict]):
    """A `datasets.Dataset` of messages + images; images (paths, bytes or PIL) are decoded by `load_image` on access."""
    from datasets import Dataset

    features = sample_features()
    dataset = Dataset.from_list([{k: r.get(k) for k in features} for r in records], features=features)
    return dataset.with_transform(_decode_images)


def split_prompt(messages: list[dict]) -> tuple[list[dict], str | None]:
    """(prompt messages, target text): the last assistant turn is what evaluation compares against. A
    conversation that ends with the user's question (`predict` input) is all prompt, with no target."""
    if messages[-1]["role"] != "assistant":
        return messages, None
    target = "".join(p["text"] or "" for p in messages[-1]["content"] if p["type"] == "text")
    return messages[:-1], target


def training_samples(data, processor) -> tuple[list[dict[str, Any]], DataReport]:
    """The training split read, checked and measured with the model's processor, and the report of what was found."""
    from vlmtune.data.lengths import fit_lengths

    report = DataReport()
    samples = read_split(data, "train", report)
    samples = fit_lengths(samples, processor, max_length=data.max_length, truncation=data.truncation,
                          on_error=data.on_error, report=report, cache_dir=data.cache_dir)
    return samples, report
