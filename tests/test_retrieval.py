"""Retrieval: ranks and recall with shared captions, zero-shot classes, embeddings on disk, FAISS search (flat and
IVF), retrieval-augmented VQA beside plain VQA, and the errors a user can fix."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import vlmtune

from vlmtune.config import EvalTaskConfig, TaskMetricConfig
from vlmtune.eval.retrieval import retrieval_rows
from vlmtune.eval.scoring import score_rows


class TableEncoder:
    """An encoder whose embeddings are looked up in a table: the retrieval arithmetic, checked by hand."""

    has_text = True

    def __init__(self, vectors: dict[str, list[float]]) -> None:
        self.vectors = vectors

    def _embed(self, keys) -> torch.Tensor:
        return torch.nn.functional.normalize(torch.tensor([self.vectors[k] for k in keys], dtype=torch.float32), dim=-1)

    def images(self, images, batch_size=64):
        return self._embed(images)

    def texts(self, texts, batch_size=64):
        return self._embed(texts)


def _doc(doc_id: str, image: str, caption: str) -> dict:
    return {"id": doc_id, "images": [image], "target": caption, "kind": None}


def test_recall_counts_shared_captions_once_and_any_paired_image_as_found():
    # Images a and b share the caption "x"; c's caption "y". Image b is closest to "y" (a miss at rank 0).
    encoder = TableEncoder({"a": [1, 0], "b": [0, 1], "c": [0.3, 1], "x": [1, 0.1], "y": [0, 1],
                            "a photo of a x.": [1, 0], "a photo of a y.": [0, 1]})
    docs = [_doc("1", "a", "x"), _doc("2", "b", "x"), _doc("3", "c", "y")]
    task = EvalTaskConfig(task="retrieval", output_type="retrieval", class_label="^(\\w)",
                          metric_list=[TaskMetricConfig(metric="image_to_text_hit", name="retrieval",
                                                        aggregation="retrieval", kwargs={"ks": [1, 2]})])
    rows = retrieval_rows(encoder, docs, task)
    assert [r["image_to_text_rank"] for r in rows] == [0, 1, 0]
    # Distinct captions are the text queries: "x" (owned by doc 1) finds a first; "y" (doc 3) finds b, then c.
    assert [r["text_to_image_ranks"] for r in rows] == [[0], [], [1]]
    assert [r["zero_shot_prediction"] for r in rows] == ["x", "y", "y"] and rows[1]["label"] == "x"
    metrics = score_rows(task, rows)
    assert metrics["image_to_text/recall@1"] == pytest.approx(2 / 3)
    assert metrics["image_to_text/recall@2"] == 1.0
    assert metrics["text_to_image/recall@1"] == 0.5 and metrics["text_to_image/recall@2"] == 1.0
    assert metrics["zero_shot/accuracy"] == pytest.approx(2 / 3) and metrics["zero_shot/classes"] == 2
    assert [r["score"] for r in rows] == [1.0, 0.0, 1.0]  # each row's first metric: recall@ks[0]


def test_a_class_pattern_that_finds_nothing_names_the_doc():
    encoder = TableEncoder({"a": [1, 0], "x": [1, 0]})
    task = EvalTaskConfig(task="retrieval", output_type="retrieval", class_label="^(z+)")
    with pytest.raises(ValueError, match="doc '1'.*class_label"):
        retrieval_rows(encoder, [_doc("1", "a", "x")], task)


def test_embeddings_are_written_with_ids_and_searched_by_text_and_image(road):
    from datasets import load_dataset

    rows = load_dataset("parquet", data_files=str(road / "embed" / "embeddings.parquet"), split="train")
    meta = json.loads((road / "embed" / "embed.json").read_text())
    assert meta["rows"] == len(rows) == len(set(rows["id"])) and meta["dual_encoder"]
    assert set(rows.column_names) == {"id", "image", "caption", "image_embedding", "text_embedding"}
    assert all(abs(sum(v * v for v in vector) - 1) < 1e-4 for vector in rows["image_embedding"][:5])
    search = json.loads((road / "search" / "search.json").read_text())
    found = search["results"]
    assert len(found) == 5 and [hit["score"] for hit in found] == sorted((hit["score"] for hit in found), reverse=True)
    # The top hit's score is the cosine of the query's embedding and the hit's stored image embedding.
    from vlmtune.retrieval.encoder import load_encoder

    query = load_encoder(meta["checkpoint"]).texts([search["query"]["text"]])[0]
    stored = torch.tensor(rows[rows["id"].index(found[0]["id"])]["image_embedding"])
    assert float(query @ stored) == pytest.approx(found[0]["score"], abs=1e-4)
    by_image = json.loads((road / "search-image" / "search.json").read_text())
    assert by_image["target"] == "text" and len(by_image["results"]) == 5


def test_an_ivf_index_returns_what_the_flat_index_returns(road, tmp_path):
    query = ["embeddings=" + str(road / "embed"), "text=a red circle and a blue square.", "logger=none", "k=3"]
    vlmtune("search", f"run_dir={tmp_path / 'flat'}", *query)
    # Quoted: Hydra reads a bare comma as a list.
    vlmtune("search", f"run_dir={tmp_path / 'ivf'}", *query, "index='IVF2,Flat'")
    flat, ivf = (json.loads((tmp_path / d / "search.json").read_text())["results"] for d in ("flat", "ivf"))
    assert [hit["score"] for hit in ivf] == pytest.approx([hit["score"] for hit in flat], abs=1e-5)


def test_retrieval_augmented_vqa_is_scored_beside_plain_vqa(road):
    metrics = json.loads((road / "rag" / "metrics.json").read_text())
    assert {"accuracy", "retrieval_augmented/accuracy", "retrieval_augmented/accuracy/left_or_right"} <= set(metrics)
    plain = [json.loads(line) for line in (road / "rag" / "predictions.jsonl").read_text().splitlines()]
    augmented = [json.loads(line) for line in
                 (road / "rag" / "predictions_retrieval_augmented.jsonl").read_text().splitlines()]
    from datasets import load_dataset

    captions = set(load_dataset("parquet", data_files=str(road / "embed" / "embeddings.parquet"),
                                split="train")["caption"])
    assert [r["id"] for r in plain] == [r["id"] for r in augmented]
    for with_captions, without in zip(augmented, plain, strict=True):
        assert "Similar pictures: " in with_captions["prompt"] and "Similar pictures: " not in without["prompt"]
        assert any(caption in with_captions["prompt"] for caption in captions)


def test_search_errors_say_what_to_give(road, tmp_path, pipeline):
    with pytest.raises(AssertionError, match="give exactly one query"):
        vlmtune("search", f"run_dir={tmp_path / 'a'}", f"embeddings={road / 'embed'}", "logger=none")
    with pytest.raises(AssertionError, match="holds no embeddings.parquet"):
        vlmtune("search", f"run_dir={tmp_path / 'b'}", f"embeddings={tmp_path}", "text=x", "logger=none")
    # A VLM's vision tower embeds images only: searching captions is refused with the reason.
    vlmtune("embed", f"run_dir={tmp_path / 'vlm'}", f"checkpoint={pipeline['sft'] / 'checkpoint'}", "logger=none")
    assert json.loads((tmp_path / "vlm" / "embed.json").read_text())["dual_encoder"] is False
    with pytest.raises(AssertionError, match="embeds images only"):
        vlmtune("search", f"run_dir={tmp_path / 'c'}", f"embeddings={tmp_path / 'vlm'}", "text=x", "target=text",
                "logger=none")
