"""Retrieval as an evaluation task (`output_type: retrieval`): a dual encoder ranks every doc's image against every
caption and back; recall@k both ways and zero-shot classification are read off the ranks.

Captions that are the same text are one gallery item: an image counts as found by a caption, and a caption by an
image, whenever they are a pair of any doc (synthetic scenes share captions; COCO images have five). The rank of a
query is how many gallery items score strictly higher than its best match (0 = found first).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch

from vlmtune.data.errors import DataError
from vlmtune.data.records import split_prompt


def doc_captions(record: dict[str, Any]) -> list[str]:
    """A doc's captions: its task target (a string or a list of them) or, for data.test, its last answer."""
    target = record.get("target")
    if target is None:
        target = split_prompt(record["messages"])[1]
    captions = [target] if isinstance(target, str) else list(target)
    return [c.strip() for c in captions if c and c.strip()]


def _sharded(encode, items: Sequence[Any], state) -> torch.Tensor:
    """Embed `items` split across processes and gathered back in order (every process returns all of them)."""
    if state is None or state.num_processes == 1:
        return encode(list(items))
    from accelerate.utils import gather_object

    indexed = list(enumerate(items))
    with state.split_between_processes(indexed) as shard:
        local = encode([item for _, item in shard]) if shard else torch.empty(0)
        pieces = [(index, row) for (index, _), row in zip(shard, local.tolist(), strict=True)]
    ordered = dict(gather_object(pieces))
    return torch.tensor([ordered[i] for i in range(len(items))])


def _ranks(scores: torch.Tensor, correct: list[list[int]]) -> list[int]:
    """Per query (row of `scores`): how many items score strictly higher than its best correct item."""
    ranks = []
    for row, items in zip(scores, correct, strict=True):
        best = row[items].max()
        ranks.append(int((row > best).sum()))
    return ranks


def _classes(task, captions: list[list[str]], ids: list[str]) -> list[str] | None:
    """Each doc's zero-shot class: the first group of `task.class_label` in its first caption (None: not asked)."""
    if not task.class_label:
        return None
    pattern = re.compile(task.class_label)
    labels = []
    for doc_id, doc in zip(ids, captions, strict=True):
        match = pattern.search(doc[0])
        if match is None or not match.groups():
            raise DataError(f"task {task.task}, doc {doc_id!r}: eval.task.class_label={task.class_label!r} finds no "
                            f"class (a regex group) in its caption {doc[0]!r}; fix the pattern or set it to null",
                            "no_class")
        labels.append(match.group(1))
    return labels


def retrieval_rows(encoder, records: list[dict[str, Any]], task, state=None,
                   batch_size: int = 64) -> list[dict[str, Any]]:
    """One row per doc: its image's rank of its captions (`image_to_text_rank`), the ranks of the captions it owns
    as text queries (`text_to_image_ranks`; a caption shared by several docs is owned by the first), the top caption
    as `prediction`, and its zero-shot class and prediction when the task classifies."""
    for record in records:
        if len(record["images"]) != 1:
            raise DataError(f"task {task.task}, doc {record['id']!r}: {len(record['images'])} images; retrieval "
                            "pairs one image with its captions", "image_count")
    captions = [doc_captions(r) for r in records]
    ids = [r["id"] for r in records]
    for doc_id, doc in zip(ids, captions, strict=True):
        if not doc:
            raise DataError(f"task {task.task}, doc {doc_id!r}: no caption to retrieve", "empty_answer")
    gallery = list(dict.fromkeys(c for doc in captions for c in doc))  # distinct captions, first-seen order
    position = {text: i for i, text in enumerate(gallery)}
    images = _sharded(lambda items: encoder.images(items, batch_size), [r["images"][0] for r in records], state)
    texts = _sharded(lambda items: encoder.texts(items, batch_size), gallery, state)
    scores = images @ texts.T  # (docs, distinct captions): cosine similarities

    captions_of_doc = [[position[c] for c in doc] for doc in captions]
    docs_of_caption: list[list[int]] = [[] for _ in gallery]
    owned: list[list[int]] = [[] for _ in records]  # the captions each doc is the first to have
    for doc, items in enumerate(captions_of_doc):
        for item in items:
            if not docs_of_caption[item]:
                owned[doc].append(item)
            docs_of_caption[item].append(doc)
    image_ranks = _ranks(scores, captions_of_doc)
    text_ranks = _ranks(scores.T, docs_of_caption)
    top = scores.argmax(dim=1).tolist()

    labels = _classes(task, captions, ids)
    predicted = None
    if labels is not None:
        names = sorted(set(labels))
        prompts = encoder.texts([task.class_template.format(name) for name in names], batch_size)
        predicted = [names[i] for i in (images @ prompts.T).argmax(dim=1).tolist()]
    rows = []
    for doc, record in enumerate(records):
        row = {"id": record["id"], "images": [str(record.get("image_refs", record["images"])[0])],
               "target": captions[doc] if len(captions[doc]) > 1 else captions[doc][0],
               "prediction": gallery[top[doc]], "kind": record.get("kind"),
               "image_to_text_rank": image_ranks[doc],
               "text_to_image_ranks": [text_ranks[item] for item in owned[doc]]}
        if labels is not None:
            row |= {"label": labels[doc], "zero_shot_prediction": predicted[doc]}
        rows.append(row)
    return rows
