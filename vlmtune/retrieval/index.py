"""Embeddings on disk and a FAISS index over them, through `datasets`' FAISS integration.

`vlmtune embed` writes `embeddings.parquet` (one row per sample: `id`, `image` reference, `caption`,
`image_embedding`, `text_embedding`) and `embed.json` (which encoder, which data, the width). Search loads the
Parquet file as a `datasets.Dataset`, adds a FAISS index on one embedding column (inner product over normalised
vectors = cosine; `Flat` is exact, a factory string such as `IVF16,Flat` trains a coarse quantizer first) and asks
it for the nearest rows.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vlmtune.errors import ConfigError

EMBEDDINGS = "embeddings.parquet"
META = "embed.json"


def write_embeddings(out_dir: Path, rows: dict[str, list], meta: dict[str, Any]) -> Path:
    """Write the rows (columns of equal length) as Parquet and the metadata beside it, each through a temporary file."""
    from datasets import Dataset

    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{EMBEDDINGS}.tmp"
    Dataset.from_dict(rows).to_parquet(str(tmp))
    os.replace(tmp, out_dir / EMBEDDINGS)
    (out_dir / f".{META}.tmp").write_text(json.dumps(meta, indent=1))
    os.replace(out_dir / f".{META}.tmp", out_dir / META)
    return out_dir / EMBEDDINGS


@dataclass
class EmbeddingIndex:
    """A `vlmtune embed` output: its rows (a datasets.Dataset) and metadata, searchable by either embedding column."""

    rows: Any
    meta: dict[str, Any]
    folder: Path

    @classmethod
    def load(cls, folder: str | Path, what: str = "embeddings") -> EmbeddingIndex:
        from datasets import load_dataset

        folder = Path(folder)
        if not (folder / EMBEDDINGS).exists() or not (folder / META).exists():
            raise ConfigError(f"{what}={folder} holds no {EMBEDDINGS} / {META}; give the run directory of a "
                                    "`vlmtune embed` run")
        rows = load_dataset("parquet", data_files=str(folder / EMBEDDINGS), split="train")
        return cls(rows, json.loads((folder / META).read_text()), folder)

    def column(self, target: str) -> str:
        """The embedding column holding `target` (image | text), checked to exist."""
        if target not in ("image", "text"):
            raise ConfigError(f"target={target!r}: expected image or text")
        name = f"{target}_embedding"
        if name not in self.rows.column_names:
            raise ConfigError(f"{self.folder} has no text embeddings: {self.meta.get('checkpoint')} is a VLM, whose "
                             "vision tower embeds images only; search its images, or embed with a dual encoder")
        return name

    def search(self, target: str, queries: np.ndarray, k: int, factory: str = "Flat") -> list[list[dict[str, Any]]]:
        """The `k` nearest rows of `target` for each query vector (best first), each with its `score`."""
        import faiss

        name = self.column(target)
        if self.rows.list_indexes() != [name]:
            for existing in self.rows.list_indexes():
                self.rows.drop_index(existing)
            train = None if factory == "Flat" else len(self.rows)
            self.rows.add_faiss_index(column=name, string_factory=factory, metric_type=faiss.METRIC_INNER_PRODUCT,
                                      train_size=train)
        batch = self.rows.get_nearest_examples_batch(name, np.asarray(queries, dtype=np.float32),
                                                      k=min(k, len(self.rows)))
        results = []
        for scores, examples in zip(batch.total_scores, batch.total_examples, strict=True):
            keep = [c for c in examples if not c.endswith("_embedding")]
            results.append([{**{c: examples[c][i] for c in keep}, "score": float(score)}
                            for i, score in enumerate(scores)])
        return results
