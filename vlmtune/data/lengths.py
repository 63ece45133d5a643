"""True sample lengths before batching: text tokens plus the image tokens each placeholder expands to.

A collator that truncates a tokenized multimodal sample can cut an image block in half ("Image features and image
tokens do not match") or cut off the answer (a loss-0 sample). Here every sample is measured up front with the
processor's own chat template and assistant mask: a sample with no supervised token is an error, and a sample over
`data.max_length` loses its trailing turns (`data.truncation=drop_turns`) or is dropped whole (`drop_sample`),
counted in the report, so nothing is ever cut inside an image block.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from vlmtune.data.errors import DataError, DataReport
from vlmtune.data.images import load_image
from vlmtune.progress import progress, track

MEASURE_VERSION = 1  # bump when `measure` changes, so cached lengths are recomputed


def image_token_count(processor) -> int | None:
    """Tokens one `<image>` placeholder expands to, for fixed-count processors (None: it depends on the image)."""
    from PIL import Image

    image_token = getattr(processor, "image_token", None)
    if image_token is None or type(processor).__name__ not in ("LlavaProcessor", "VlmtuneProcessor"):
        return None
    ids = processor(text=image_token, images=[Image.new("RGB", (64, 64))], return_tensors="pt")["input_ids"][0]
    return int((ids == processor.tokenizer.convert_tokens_to_ids(image_token)).sum())


def measure(sample: dict[str, Any], processor, per_image: int | None) -> tuple[int, int]:
    """(tokens, supervised tokens) of one sample as the model will see it."""
    if per_image is None:  # image-dependent expansion: run the processor itself on the decoded images
        images = [load_image(image, f"sample {sample['id']!r}") for image in sample["images"]]
        out = processor.apply_chat_template(
            [with_images(sample["messages"], images)], tokenize=True, return_dict=True,
            return_assistant_tokens_mask=True,
        )
        return len(out["input_ids"][0]), int(sum(out["assistant_masks"][0]))
    out = processor.tokenizer.apply_chat_template(
        sample["messages"], tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
        chat_template=processor.chat_template,
    )
    # Each placeholder is one token of the rendered text and becomes `per_image` tokens in the processor.
    return len(out["input_ids"]) + len(sample["images"]) * (per_image - 1), int(sum(out["assistant_masks"]))


def with_images(messages: list[dict], images: list) -> list[dict]:
    """Messages whose image parts carry the decoded images, as processors' apply_chat_template expects."""
    remaining = iter(images)
    return [{**m, "content": [{"type": "image", "image": next(remaining)} if p["type"] == "image" else p
                              for p in m["content"]]} for m in messages]


def _drop_last_exchange(sample: dict[str, Any]) -> dict[str, Any] | None:
    """The sample without its last user/assistant exchange (and that exchange's images), or None if one is left."""
    messages = sample["messages"]
    user_turns = [i for i, m in enumerate(messages) if m["role"] == "user"]
    if len(user_turns) < 2:
        return None
    cut = user_turns[-1]
    kept_images = sum(p["type"] == "image" for m in messages[:cut] for p in m["content"])
    return {**sample, "messages": messages[:cut], "images": sample["images"][:kept_images]}


def measure_all(samples: list[dict[str, Any]], processor, per_image: int | None,
                cache_dir: str | Path | None = None) -> list[tuple[int, int]]:
    """(tokens, supervised tokens) of every sample, cached by `datasets` fingerprints under `cache_dir`.

    The cache key is the samples' content fingerprint together with everything that changes a measurement (the chat
    template, the tokenizer's vocabulary, the image-token count): a second run over the same data and processor
    reads the lengths back instead of tokenizing again.
    """
    if cache_dir is None:
        return [measure(sample, processor, per_image) for sample in track(samples, "measuring samples", "samples")]
    from datasets import Dataset
    from datasets.fingerprint import Hasher

    table = Dataset.from_list([{"index": i, "sample": json.dumps(s, sort_keys=True, default=str)}
                               for i, s in enumerate(samples)])
    tokenizer = processor.tokenizer
    key = Hasher.hash([table._fingerprint, processor.chat_template, sorted(tokenizer.get_vocab().items()), per_image,
                       type(processor).__name__, MEASURE_VERSION])
    Path(cache_dir).mkdir(parents=True, exist_ok=True)

    cache_file = Path(cache_dir) / f"lengths-{key}.arrow"
    # Progress only when measuring: lengths read back from the cache take no time worth watching.
    cached = cache_file.exists()
    with contextlib.nullcontext() if cached else progress(len(samples), "measuring samples", "samples") as bar:

        def measure_row(row: dict[str, Any]) -> dict[str, int]:
            length, supervised = measure(samples[row["index"]], processor, per_image)
            bar.update(1)
            return {"length": length, "supervised": supervised}

        measured = table.map(measure_row, remove_columns=["sample"], new_fingerprint=key,
                             cache_file_name=str(cache_file), load_from_cache_file=True)
    return list(zip(measured["length"], measured["supervised"], strict=True))


def fit_sample(sample: dict[str, Any], measured: tuple[int, int], processor, per_image: int | None, *,
               max_length: int | None, truncation: str, report: DataReport) -> dict[str, Any] | None:
    """One measured sample brought under `max_length` by whole turns, with its `length`; None when it was dropped
    (counted in `report.dropped`). A sample with no supervised token raises a DataError (kind no_supervised_tokens)."""
    length, supervised = measured
    if supervised == 0:
        raise DataError(f"sample {sample['id']!r}: no token of it is supervised (the chat template's assistant mask "
                        "is empty): it would train with loss 0; check model.template", "no_supervised_tokens")
    shortened = False
    while max_length is not None and length > max_length:
        sample = _drop_last_exchange(sample) if truncation == "drop_turns" else None
        if sample is None:
            report.dropped["too long: sample dropped"] += 1
            return None
        shortened = True
        length, supervised = measure(sample, processor, per_image)
    if shortened:
        report.dropped["too long: trailing turns dropped"] += 1
    return {**sample, "length": length}


def fit_lengths(samples: list[dict[str, Any]], processor, *, max_length: int | None, truncation: str = "drop_turns",
                on_error: str = "raise", report: DataReport | None = None,
                cache_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Measure every sample; refuse all-masked ones; bring long ones under `max_length` by whole turns or drop them.

    Adds `length` (tokens) to each kept sample, for length-grouped batching and the report's histogram.
    """
    report = report if report is not None else DataReport()
    per_image = image_token_count(processor)
    kept = []
    for sample, measured in zip(samples, measure_all(samples, processor, per_image, cache_dir), strict=True):
        try:
            fitted = fit_sample(sample, measured, processor, per_image, max_length=max_length,
                                truncation=truncation, report=report)
        except DataError as error:
            if on_error == "raise":
                raise
            report.add_error(error)
            continue
        if fitted is not None:
            kept.append(fitted)
            report.lengths.append(fitted["length"])
    report.kept = len(kept)
    report.images = sum(len(s["images"]) for s in kept)
    if not kept:
        raise DataError(f"no sample fits data.max_length={max_length}\n{report.summary()}", "empty")
    return kept
