"""Guards on the loss mask: training must never run on samples whose labels are all masked (a silent loss of 0).

TRL's VLM collator supervises the tokens inside the chat template's `{% generation %}` blocks. A template without
them, or one whose marks miss the answer, gives all-masked rows and a zero loss without any error. Before training,
`check_supervision` collates a few samples with the trainer's own collator and requires the supervised text of each
to be exactly its assistant answers plus special tokens (the end-of-turn token); `RequireSupervised` then refuses
any batch that holds a row with no supervised token at all.
"""

from __future__ import annotations

import copy
import itertools
import logging
import re
from typing import Any

log = logging.getLogger("vlmtune")


def supervised_texts(collator, tokenizer, examples: list[dict[str, Any]]) -> list[str]:
    """The decoded supervised (label != -100) tokens of each example, as the collator builds them."""
    batch = collator(copy.deepcopy(examples))
    return [tokenizer.decode(ids[labels != -100], skip_special_tokens=False)
            for ids, labels in zip(batch["input_ids"], batch["labels"], strict=True)]


def _answers(messages: list[dict]) -> list[str]:
    out = []
    for message in messages:
        if message["role"] != "assistant":
            continue
        content = message["content"]
        out.append(content if isinstance(content, str) else
                   "".join(p.get("text") or "" for p in content if p.get("type") == "text"))
    return out


def check_supervision(collator, tokenizer, dataset, n: int = 4) -> None:
    """Raise unless each of the first `n` samples supervises exactly its assistant answers (plus special tokens)."""
    # A stream (IterableDataset) is peeked at: its first samples are read again by the training loop.
    examples = [dataset[i] for i in range(min(n, len(dataset)))] if hasattr(dataset, "__len__") else list(
        itertools.islice(dataset, n))
    if not examples or "messages" not in examples[0]:
        return
    specials = sorted({*tokenizer.all_special_tokens, *tokenizer.get_added_vocab()}, key=len, reverse=True)
    stops = 0
    for example, text in zip(examples, supervised_texts(collator, tokenizer, examples), strict=True):
        where = f"training sample {example.get('id', '?')!r}"
        if not text:
            raise ValueError(f"{where}: no token is supervised (all labels masked, loss 0). The chat template needs "
                             "{% generation %} marks around the assistant's answer: pick a vlmtune template with "
                             "model.template=<key> (vlmtune.templates.TEMPLATES)")
        rest = text
        for answer in _answers(example["messages"]):
            at = rest.find(answer.strip())
            if at < 0:
                raise ValueError(f"{where}: the supervised tokens {text!r} do not contain the answer {answer!r}; the "
                                 "chat template's {% generation %} marks are misplaced for this tokenizer")
            rest = rest[:at] + rest[at + len(answer.strip()):]
        leftover = re.sub(r"\s+", "", re.sub("|".join(map(re.escape, specials)) or "$^", "", rest))
        if leftover:
            raise ValueError(f"{where}: the supervised tokens {text!r} hold more than the answers (left over: "
                             f"{leftover!r}); the chat template's {{% generation %}} marks cover prompt text")
        stops += any(text.rstrip().endswith(s) for s in specials)
    if stops < len(examples):
        log.warning("the supervised tokens of some samples end without a special (end-of-turn) token: the model is "
                    "not taught to stop; use a vlmtune template (model.template) that closes the answer")


class RequireSupervised:
    """Wraps a collator: a batch with a row whose labels are all masked is an error, never a silent zero loss."""

    def __init__(self, collator) -> None:
        self.collator = collator

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collator(examples)
        empty = (batch["labels"] == -100).all(dim=1).nonzero().flatten().tolist()
        if empty:
            ids = [examples[i].get("id", i) for i in empty]
            raise ValueError(f"samples {ids} have no supervised token (all labels masked): was the answer cut, or "
                             "does the chat template lack {% generation %} marks around it?")
        return batch

    def __getattr__(self, name: str):
        if name == "collator":  # not set yet (e.g. while unpickling)
            raise AttributeError(name)
        return getattr(self.collator, name)
