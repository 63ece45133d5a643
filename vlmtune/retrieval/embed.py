"""Embed a data split: each sample's image and its caption (its last answer), with its id."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlmtune.data.records import split_prompt


def image_reference(image: Any) -> str:
    """What a row records of an image: its path (images held as bytes in the data are recorded as '')."""
    return str(Path(image).resolve()) if isinstance(image, str | Path) else ""


def embedding_rows(encoder, records: list[dict[str, Any]], batch_size: int = 64) -> dict[str, list]:
    """Columns `id`, `image`, `caption`, `image_embedding` and, for a dual encoder, `text_embedding`. Samples
    without an image get no row (their id is reported by the caller's count)."""
    kept = [r for r in records if r["images"]]
    captions = [split_prompt(r["messages"])[1].strip() for r in kept]
    columns = {"id": [r["id"] for r in kept], "image": [image_reference(r["images"][0]) for r in kept],
               "caption": captions,
               "image_embedding": encoder.images([r["images"][0] for r in kept], batch_size).tolist()}
    if encoder.has_text:
        columns["text_embedding"] = encoder.texts(captions, batch_size).tolist()
    return columns
