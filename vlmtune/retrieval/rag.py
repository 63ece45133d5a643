"""Retrieval-augmented VQA: each question gets the captions nearest to it in a `vlmtune embed` index, put before the
question in its prompt. Evaluation scores the same model with and without them (vlmtune.eval.run)."""

from __future__ import annotations

from typing import Any

from vlmtune.config import RetrievalAugmentConfig
from vlmtune.errors import ConfigError


def _question(record: dict[str, Any]) -> str:
    """The text of a record's first user turn (the question), for text queries."""
    return " ".join(part["text"] for part in record["messages"][0]["content"] if part["type"] == "text").strip()


def retrieved_captions(records: list[dict[str, Any]], cfg: RetrievalAugmentConfig,
                       batch_size: int = 64) -> list[list[dict[str, Any]]]:
    """For each record, the `cfg.k` nearest distinct captions (with id and score), searched with its image (across
    modalities: image query, caption embeddings) or its question text."""
    from vlmtune.retrieval.encoder import load_encoder
    from vlmtune.retrieval.index import EmbeddingIndex

    if cfg.k < 1:
        raise ConfigError(f"eval.retrieval.k={cfg.k}: retrieve at least one caption")
    index = EmbeddingIndex.load(cfg.embeddings, "eval.retrieval.embeddings")
    index.column("text")  # the captions must have been embedded (a dual encoder)
    encoder = load_encoder(index.meta["checkpoint"], what=f"the encoder recorded in {cfg.embeddings}")
    if cfg.query == "image":
        missing = [r["id"] for r in records if not r["images"]]
        if missing:
            raise ConfigError(f"eval.retrieval.query=image, but samples {missing[:5]} have no image; use query=text")
        queries = encoder.images([r["images"][0] for r in records], batch_size)
    else:
        queries = encoder.texts([_question(r) for r in records], batch_size)
    # Training captions repeat (scenes share descriptions): ask for more and keep the first k distinct ones.
    hits = index.search("text", queries.numpy(), cfg.k * 8)
    out = []
    for found in hits:  # best first
        distinct: dict[str, dict[str, Any]] = {}
        for hit in found:
            distinct.setdefault(hit["caption"], hit)
        out.append(list(distinct.values())[: cfg.k])
    return out


def augmented(records: list[dict[str, Any]], retrieved: list[list[dict[str, Any]]],
              template: str) -> list[dict[str, Any]]:
    """Copies of `records` whose first user turn starts with the template filled with their retrieved captions."""
    out = []
    for record, hits in zip(records, retrieved, strict=True):
        context = {"type": "text", "text": template.format(captions=" ".join(hit["caption"] for hit in hits))}
        first, *rest = record["messages"]
        messages = [{**first, "content": [context, *first["content"]]}, *rest]
        out.append({**record, "messages": messages, "retrieved": [hit["id"] for hit in hits]})
    return out
