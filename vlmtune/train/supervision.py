"""Guards on the loss mask: training must never run on samples with nothing supervised (a silent loss of 0).

TRL's VLM collator supervises the tokens inside the chat template's `{% generation %}` blocks; DPO's supervises each
pair's two completions. A template without the marks, or one whose marks miss the answer, gives rows with nothing
supervised and a zero loss without any error. Before training, `check_supervision` collates a few samples with the
trainer's own collator and requires the supervised text of each row to be exactly its answers plus special tokens
(the end-of-turn token); `RequireSupervised` then refuses any batch that holds a sample with no supervised token at
all, a whole row or one sample of a packed row.
"""

from __future__ import annotations

import copy
import itertools
import logging
import re
from typing import Any

import torch

from vlmtune.errors import DataError

log = logging.getLogger("vlmtune")


def supervised_mask(batch: dict[str, Any]) -> torch.Tensor:
    """(rows, length) booleans: the tokens a collated batch trains on (SFT labels, DPO completions)."""
    if "labels" in batch:
        return batch["labels"] != -100
    if "completion_mask" in batch:
        return batch["completion_mask"].bool()
    raise KeyError(f"a collated batch with neither labels nor completion_mask (keys: {sorted(batch)})")


def supervised_texts(collator, tokenizer, examples: list[dict[str, Any]]) -> list[str]:
    """The decoded supervised tokens of each row, as the collator builds them (DPO: chosen rows, then rejected)."""
    batch = collator(copy.deepcopy(examples))
    return [tokenizer.decode(ids[mask], skip_special_tokens=False)
            for ids, mask in zip(batch["input_ids"], supervised_mask(batch), strict=True)]


def _text(content) -> str:
    return content if isinstance(content, str) else "".join(p.get("text") or "" for p in content
                                                             if p.get("type") == "text")


def _answers(messages: list[dict]) -> list[str]:
    return [_text(message["content"]) for message in messages if message["role"] == "assistant"]


def _rows(examples: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """(where, the answers its supervised text must be) per collated row."""
    if "messages" in examples[0]:
        return [(f"training sample {e.get('id', '?')!r}", _answers(e["messages"])) for e in examples]
    if {"chosen", "rejected"} <= set(examples[0]):  # DPO: all chosen rows first, then all rejected rows
        return [(f"preference pair {e.get('id', '?')!r} ({side})", _answers(e[side]))
                for side in ("chosen", "rejected") for e in examples]
    raise DataError(f"cannot check the loss mask of samples with keys {sorted(examples[0])}: expected `messages` "
                    "(sft) or `prompt` / `chosen` / `rejected` (dpo)")


def check_supervision(collator, tokenizer, dataset, n: int = 4) -> None:
    """Raise unless each of the first `n` samples supervises exactly its answers (plus special tokens)."""
    # A stream (IterableDataset) is peeked at: its first samples are read again by the training loop.
    examples = [dataset[i] for i in range(min(n, len(dataset)))] if hasattr(dataset, "__len__") else list(
        itertools.islice(dataset, n))
    if not examples:
        raise DataError("the training data holds no sample: nothing to train on")
    specials = sorted({*tokenizer.all_special_tokens, *tokenizer.get_added_vocab()}, key=len, reverse=True)
    rows = _rows(examples)
    stops = 0
    for (where, answers), text in zip(rows, supervised_texts(collator, tokenizer, examples), strict=True):
        if not text:
            raise DataError(f"{where}: no token is supervised (all labels masked, loss 0). The chat template needs "
                            "{% generation %} marks around the assistant's answer: pick a vlmtune template with "
                            "model.template=<key> (vlmtune.templates.TEMPLATES)")
        rest = text
        for answer in answers:
            at = rest.find(answer.strip())
            if at < 0:
                raise DataError(f"{where}: the supervised tokens {text!r} do not contain the answer {answer!r}; the "
                                "chat template's {% generation %} marks are misplaced for this tokenizer")
            rest = rest[:at] + rest[at + len(answer.strip()):]
        leftover = re.sub(r"\s+", "", re.sub("|".join(map(re.escape, specials)) or "$^", "", rest))
        if leftover:
            raise DataError(f"{where}: the supervised tokens {text!r} hold more than the answers (left over: "
                            f"{leftover!r}); the chat template's {{% generation %}} marks cover prompt text")
        stops += any(text.rstrip().endswith(s) for s in specials)
    if stops < len(rows):
        log.warning("the supervised tokens of some samples end without a special (end-of-turn) token: the model is "
                    "not taught to stop; use a vlmtune template (model.template) that closes the answer")


def _unsupervised_samples(batch: dict[str, Any]) -> list[int]:
    """Indices of the samples in a collated batch with no supervised token: rows, or the samples of a packed row
    (one row whose position ids restart at 0 for every sample; DPO's rows are chosen then rejected per pair)."""
    mask = supervised_mask(batch)
    positions = batch.get("position_ids")
    if positions is not None and mask.shape[0] == 1 and "labels" in batch:
        text = positions.reshape(-1, positions.shape[-1])[0]  # (4, 1, L) 3-D rope: the text positions first
        starts = (text == 0).nonzero().flatten().tolist()
        bounds = zip(starts, [*starts[1:], text.numel()], strict=True)
        return [i for i, (start, end) in enumerate(bounds) if not mask[0, start:end].any()]
    empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
    if "completion_mask" in batch:
        pairs = mask.shape[0] // 2
        return sorted({row % pairs for row in empty})
    return empty


class RequireSupervised:
    """Wraps a collator: a batch holding a sample with nothing supervised is an error, never a silent zero loss."""

    def __init__(self, collator) -> None:
        self.collator = collator

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collator(examples)
        empty = _unsupervised_samples(batch)
        if empty:
            ids = [examples[i].get("id", i) for i in empty]
            raise DataError(f"samples {ids} have no supervised token (all labels masked): was the answer cut, or "
                            "does the chat template lack {% generation %} marks around it?")
        return batch

    def __getattr__(self, name: str):
        if name == "collator":  # not set yet (e.g. while unpickling)
            raise AttributeError(name)
        return getattr(self.collator, name)
