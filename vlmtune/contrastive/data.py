"""Image-caption pairs from any supported data file: each sample's one image and its last answer as the caption.

LLaVA caption files (`captions.json`: "Describe the image.\\n<image>" -> caption), ShareGPT and chat `messages`
files all read this way, through the same reader, checks and `data.on_error` policy as training data.
"""

from __future__ import annotations

from typing import Any

import torch

from vlmtune.data.errors import DataError
from vlmtune.data.images import load_image
from vlmtune.data.records import split_prompt


def caption_pairs(records: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    """`{id, image, caption}` per sample; a sample without exactly one image or with an empty caption is an error
    naming it (a pair needs both halves)."""
    pairs = []
    for record in records:
        _, caption = split_prompt(record["messages"])
        if len(record["images"]) != 1:
            raise DataError(f"{where}, sample {record['id']!r}: {len(record['images'])} images; an image-caption pair "
                            "needs exactly one (its last answer is the caption)", "image_count")
        if not caption.strip():
            raise DataError(f"{where}, sample {record['id']!r}: the last answer (the caption) is empty", "empty_answer")
        pairs.append({"id": record["id"], "image": record["images"][0], "caption": caption.strip()})
    return pairs


class PairDataset(torch.utils.data.Dataset):
    """Pairs for the Trainer: images stay paths (or bytes) until the collator decodes its batch."""

    def __init__(self, pairs: list[dict[str, Any]]) -> None:
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.pairs[index]


class PairCollator:
    """A batch of pairs -> pixel values, caption token ids and their attention mask."""

    def __init__(self, processor) -> None:
        self.processor = processor

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        images = [load_image(pair["image"], f"sample {pair['id']!r}") for pair in batch]
        return {"pixel_values": self.processor.images(images), **self.processor.texts([p["caption"] for p in batch])}
