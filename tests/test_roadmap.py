"""docs/roadmap.md, the guided tour: every command runs as written (fast mode, conftest.road) and leaves what the
tour says it leaves: its numbers in metrics files and its pictures as valid PNG images."""

from __future__ import annotations

import json

from conftest import roadmap_commands
from PIL import Image


def test_the_tour_has_a_command_per_step_and_every_recipe_in_it():
    commands = roadmap_commands()
    assert len(commands) >= 12
    assert {argv[0] for argv in commands} == {"sft", "evaluate", "contrastive", "describe", "pretrain", "quantize",
                                              "embed", "search"}


def _metrics(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())


def test_each_step_leaves_its_number(road):
    assert 0 <= _metrics(road / "text-only")["accuracy"] <= 1  # 1: the blind baseline
    untrained = _metrics(road / "untrained")  # 2: two unrelated towers
    assert {"image_to_text/recall@1", "text_to_image/recall@1", "zero_shot/accuracy"} <= set(untrained)
    trained = _metrics(road / "contrastive")  # 3: before and after
    assert trained.keys() >= {"before/image_to_text/recall@1", "image_to_text/recall@1"}
    assert (road / "contrastive" / "vision" / "config.json").exists()
    qformer = json.loads((road / "pretrain-qformer" / "checkpoint" / "config.json").read_text())  # 5
    assert qformer["image_seq_length"] == 4 and qformer["projector"]["name"] == "qformer"
    assert json.loads((road / "pretrain" / "checkpoint" / "config.json").read_text())["image_seq_length"] == 10
    assert "accuracy/left_or_right" in _metrics(road / "sft")  # 6
    assert (road / "lora" / "checkpoint" / "adapter_config.json").exists()  # 7
    assert (road / "qlora" / "checkpoint" / "adapter_config.json").exists()
    variants = [row["variant"] for row in json.loads((road / "quantize" / "quantize.json").read_text())]  # 8
    assert variants == ["fp32", "int8", "nf4"]
    rag = _metrics(road / "rag")  # 9: the same model with and without retrieved captions
    assert {"accuracy", "retrieval_augmented/accuracy"} <= set(rag)


def test_every_picture_is_a_valid_image(road):
    pictures = ["text-only/loss.png", "contrastive/loss.png", "contrastive/similarity.png",
                "contrastive/attention.png", "pretrain/loss.png", "pretrain/model.png", "sft/loss.png",
                "search/search.png", "search-image/search.png"]
    for name in pictures:
        with Image.open(road / name) as image:
            image.verify()  # a complete, uncorrupted PNG
        with Image.open(road / name) as image:
            assert image.format == "PNG" and image.width > 200 and image.height > 100, name
