"""Image-caption pairs from any supported data file: each sample's one image and its last answer as the caption.

LLaVA caption files (`captions.json`: "Describe the image.\\n<image>" -> caption), ShareGPT and chat `messages`
files all read this way, through the same reader, checks and `data.on_error` policy as training data.
"""

from __future__ import annotations

import random
import re
from typing import Any

import torch

from vlmtune.data.errors import DataError
from vlmtune.data.images import load_image
from vlmtune.data.records import split_prompt
from vlmtune.errors import ConfigError


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


_PHRASE_BREAK = re.compile(r"(,\s*|\s+and\s+|;\s*)")


def swapped(caption: str, seed: str) -> str | None:
    """A hard negative for `caption` (NegCLIP, Yuksekgonul et al. 2023): two of its phrases swapped ("a red circle
    and a blue square." -> "a blue square and a red circle."), or, with one phrase, two of its words; None when no
    swap changes the text. A bag-of-words model cannot tell the two apart; order and binding can."""
    body = caption.rstrip(".!? ")
    end = caption[len(body):]
    pieces = _PHRASE_BREAK.split(body)  # phrases at even positions, their separators between
    slots = list(range(0, len(pieces), 2))
    if len(slots) < 2:
        pieces, slots = body.split(" "), list(range(len(body.split(" "))))
        if len(slots) < 2:
            return None
        joiner = " "
    else:
        joiner = ""
    a, b = random.Random(seed).sample(slots, 2)
    pieces[a], pieces[b] = pieces[b], pieces[a]
    negative = joiner.join(pieces) + end
    return negative if negative != caption else None


class PairCollator:
    """A batch of pairs -> pixel values, caption token ids and their attention mask; with `negatives`, also a
    swapped caption per pair (`negative_*`; `negative_mask` is False where no swap changes the caption)."""

    def __init__(self, processor, negatives: str = "none") -> None:
        if negatives not in ("none", "swap"):
            raise ConfigError(f"negatives={negatives!r}: expected none or swap")
        self.processor, self.negatives = processor, negatives

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        images = [load_image(pair["image"], f"sample {pair['id']!r}") for pair in batch]
        captions = [p["caption"] for p in batch]
        out = {"pixel_values": self.processor.images(images), **self.processor.texts(captions)}
        if self.negatives == "swap":
            negatives = [swapped(p["caption"], p["id"]) for p in batch]
            tokens = self.processor.texts([n or c for n, c in zip(negatives, captions, strict=True)])
            out |= {f"negative_{k}": v for k, v in tokens.items()}
            out["negative_mask"] = torch.tensor([n is not None for n in negatives])
        return out
