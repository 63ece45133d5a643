"""LLaVA-format JSON -> a `datasets.Dataset` of chat `messages` + `images`, the layout TRL's VLM collator trains on.

A LLaVA record is `{"id", "image": "rel/path.png" | [...], "conversations": [{"from": "human"|"gpt"|"system",
"value": "...<image>..."}]}`. Each `<image>` placeholder becomes an `{"type": "image"}` part at the same position, so
the chat template renders the text exactly as written and the processor expands each placeholder to the projector's
token count.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
PLACEHOLDER = "<image>"


class DataError(ValueError):
    """Bad input data; the message names the file and sample and says what to do."""


def _parts(text: str) -> list[dict[str, Any]]:
    """Split text at `<image>` placeholders into text and image parts (every part has both keys: one Arrow schema)."""
    parts: list[dict[str, Any]] = []
    for i, chunk in enumerate(text.split(PLACEHOLDER)):
        if i > 0:
            parts.append({"type": "image", "text": None})
        if chunk:
            parts.append({"type": "text", "text": chunk})
    return parts


def convert_record(record: dict[str, Any], source: str, image_root: Path) -> dict[str, Any]:
    """One LLaVA record -> {"id", "messages", "images"}; raises DataError naming `source` and the sample id."""
    sample_id = record.get("id", "<no id>")
    where = f"{source}, sample {sample_id!r}"
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{where}: 'conversations' must be a non-empty list of {{from, value}} turns")
    messages = []
    for turn in turns:
        role = ROLES.get(turn.get("from", ""))
        if role is None or not isinstance(turn.get("value"), str):
            raise DataError(f"{where}: each turn needs 'from' in {sorted(ROLES)} and a string 'value'; got {turn!r}")
        messages.append({"role": role, "content": _parts(turn["value"])})
    if messages[-1]["role"] != "assistant":
        raise DataError(f"{where}: the last turn must be the assistant's answer (from: gpt)")

    image_field = record.get("image")
    images = [] if image_field is None else [image_field] if isinstance(image_field, str) else list(image_field)
    placeholders = sum(turn["value"].count(PLACEHOLDER) for turn in turns)
    if placeholders != len(images):
        raise DataError(f"{where}: {placeholders} {PLACEHOLDER} placeholder(s) but {len(images)} image(s)")
    paths = []
    for image in images:
        path = image_root / image
        if not path.is_file():
            raise DataError(f"{where}: image file {path} does not exist (image paths are relative to {image_root})")
        paths.append(str(path))
    # `kind` (a question type, when the data has one) lets evaluation report accuracy per kind.
    return {"id": str(sample_id), "messages": messages, "images": paths, "kind": record.get("kind")}


def read_llava_json(path: str | Path, image_root: str | Path | None = None, limit: int | None = None) -> list[dict]:
    """Read and convert a LLaVA JSON (a list) or JSONL file, with errors that name the file and sample."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} does not exist; run `vlmtune synth` for the demo data or fix the data path")
    root = Path(image_root) if image_root else path.parent
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".jsonl":
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            records = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a list of LLaVA records")
    return [convert_record(r, str(path), root) for r in records[:limit]]


def blank_images(records: list[dict], out_dir: str | Path) -> list[dict]:
    """Swap every image for one uniform grey image: the blind baseline, same text and model, nothing to see.

    The grey image has the size of the first image, is written to `out_dir/blank.png`, and is used for training
    and testing alike, so the baseline measures what the text alone gives away.
    """
    from PIL import Image

    first = next((r["images"][0] for r in records if r["images"]), None)
    if first is None:
        return records
    with Image.open(first) as image:
        size = image.size
    blank = Path(out_dir) / "blank.png"
    if not blank.exists():  # every rank may get here: write through a private file, then rename
        blank.parent.mkdir(parents=True, exist_ok=True)
        private = blank.with_name(f".blank-{os.getpid()}.png")
        Image.new("RGB", size, (128, 128, 128)).save(private)
        os.replace(private, blank)
    return [{**r, "images": [str(blank)] * len(r["images"])} for r in records]


def to_dataset(records: list[dict]):
    """A `datasets.Dataset` whose `images` column decodes image files lazily, on access."""
    from datasets import Dataset, Image, List

    dataset = Dataset.from_list(records)
    return dataset.cast_column("images", List(Image()))


def split_prompt(messages: list[dict]) -> tuple[list[dict], str]:
    """(prompt messages, target text): the last assistant turn is what evaluation compares against."""
    target = "".join(p["text"] or "" for p in messages[-1]["content"] if p["type"] == "text")
    return messages[:-1], target
