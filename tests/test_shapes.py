"""Tests of the synthetic shapes VQA data: determinism, caching, answers against pixels, balance and record format."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from vlmtune.data.shapes import (
    BACKGROUND,
    COLORS,
    KINDS,
    SHAPES,
    Shape,
    answer,
    caption,
    make_dataset,
    render,
    shape_box,
    shape_center,
    write_shapes_dataset,
)

SMALL = dict(n_train=200, n_test=40)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _load(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))


def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path: Path) -> None:
    write_shapes_dataset(tmp_path / "a", seed=3, **SMALL)
    write_shapes_dataset(tmp_path / "b", seed=3, **SMALL)
    write_shapes_dataset(tmp_path / "c", seed=4, **SMALL)
    a, b, c = (_files(tmp_path / name) for name in "abc")
    assert a == b
    assert a.keys() == c.keys()
    for name in ("train.json", "test.json", "captions.json", "images/train_00000.png"):
        assert a[name] != c[name], name


def test_rerun_is_a_no_op_and_changed_parameters_regenerate(tmp_path: Path) -> None:
    paths = write_shapes_dataset(tmp_path, seed=0, **SMALL)
    assert set(paths) == {"train", "test", "captions", "captions_test", "preferences_train", "preferences_test"}
    assert all(p.exists() for p in paths.values())
    mtimes = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    assert write_shapes_dataset(tmp_path, seed=0, **SMALL) == paths
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == mtimes

    # Fewer samples: regenerated, and images of the larger run do not linger.
    write_shapes_dataset(tmp_path, seed=0, n_train=20, n_test=4)
    assert len(_load(paths["train"])) == 20 and len(_load(paths["test"])) == 4
    assert len(list((tmp_path / "images").glob("*.png"))) == 24
    assert json.loads((tmp_path / "meta.json").read_text())["n_train"] == 20


@pytest.mark.parametrize("image_size", [32, 48, 12])
def test_pixels_match_scene(tmp_path: Path, image_size: int) -> None:
    write_shapes_dataset(tmp_path, seed=1, image_size=image_size, **SMALL)
    samples = make_dataset(seed=1, image_size=image_size, **SMALL)
    blank = Image.open(tmp_path / "blank.png")
    assert blank.size == (image_size, image_size) and set(blank.getdata()) == {BACKGROUND}
    for split, split_samples in samples.items():
        for i, sample in enumerate(split_samples):
            image = Image.open(tmp_path / f"images/{split}_{i:05d}.png").convert("RGB")
            assert image.size == (image_size, image_size)
            assert list(image.getdata()) == list(render(sample.scene, image_size).getdata())
            scene = sample.scene
            assert 2 <= len(scene) <= 3
            assert len({s.kind for s in scene}) == len(scene)  # each kind at most once
            assert len({s.col for s in scene}) == len(scene)  # distinct columns: left/right never ambiguous
            boxes = [shape_box(s, image_size) for s in scene]
            for shape, (x0, y0, x1, y1) in zip(scene, boxes, strict=True):
                assert 0 <= x0 < x1 < image_size and 0 <= y0 < y1 < image_size  # fully visible
                assert image.getpixel(shape_center(shape, image_size)) == COLORS[shape.color]
            for left, right in zip(boxes, boxes[1:], strict=False):
                assert left[2] < right[0]  # boxes ordered left to right and disjoint, so shapes never overlap
            # Everything outside the boxes is background; inside, only background or the shape's own colour.
            for x in range(image_size):
                for y in range(image_size):
                    inside = [s for s, b in zip(scene, boxes, strict=True) if b[0] <= x <= b[2] and b[1] <= y <= b[3]]
                    allowed = {BACKGROUND} | {COLORS[s.color] for s in inside}
                    assert image.getpixel((x, y)) in allowed


def test_answers_match_scene_independently_of_answer_function(tmp_path: Path) -> None:
    paths = write_shapes_dataset(tmp_path, seed=2, **SMALL)
    samples = make_dataset(seed=2, **SMALL)
    for split in ("train", "test"):
        for record, sample in zip(_load(paths[split]), samples[split], strict=True):
            question = record["conversations"][0]["value"].removesuffix("\n<image>")
            reply = record["conversations"][1]["value"]
            assert (question, reply, record["kind"]) == (sample.question, sample.answer, sample.kind)
            assert answer(sample.scene, sample.kind, **sample.params) == reply
            by_kind = {s.kind: s for s in sample.scene}
            # Pixel x of each shape's centre: left/right must follow the drawn positions, not just the grid columns.
            x = {s.kind: shape_center(s, 32)[0] for s in sample.scene}
            if m := re.fullmatch(r"What color is the (\w+)\?", question):
                assert reply == by_kind[m[1]].color
            elif m := re.fullmatch(r"How many (\w+) shapes are there\?", question):
                assert reply == str(sum(s.color == m[1] for s in sample.scene))
            elif m := re.fullmatch(r"Is the (\w+) left or right of the (\w+)\?", question):
                assert m[1] != m[2]
                assert reply == ("left" if x[m[1]] < x[m[2]] else "right")
            elif m := re.fullmatch(r"What shape is on the (left|right)\?", question):
                pick = min if m[1] == "left" else max
                assert reply == pick(x, key=x.get)
            else:
                pytest.fail(f"unexpected question {question!r}")


def test_answer_on_hand_made_scene() -> None:
    scene = (Shape("triangle", "red", 2, 0), Shape("circle", "blue", 0, 1), Shape("square", "red", 1, 2))
    assert answer(scene, "color_of_shape", shape="circle") == "blue"
    assert answer(scene, "count_color", color="red") == "2"
    assert answer(scene, "count_color", color="green") == "0"
    assert answer(scene, "left_or_right", shape="square", other="triangle") == "right"
    assert answer(scene, "left_or_right", shape="triangle", other="circle") == "left"
    assert answer(scene, "shape_at_side", side="left") == "triangle"
    assert answer(scene, "shape_at_side", side="right") == "square"
    assert caption(scene) == "a red triangle, a blue circle and a red square."
    assert caption(scene[:2]) == "a red triangle and a blue circle."


def test_kinds_are_balanced_and_answers_not_degenerate() -> None:
    samples = make_dataset(seed=0, n_train=2000, n_test=500)
    for split, split_samples in samples.items():
        kinds = Counter(s.kind for s in split_samples)
        assert set(kinds) == set(KINDS), split
        assert max(kinds.values()) - min(kinds.values()) <= 1, (split, kinds)
    expected = {
        "color_of_shape": set(COLORS),
        "count_color": {"0", "1", "2", "3"},
        "left_or_right": {"left", "right"},
        "shape_at_side": set(SHAPES),
    }
    train = samples["train"]
    for kind, values in expected.items():
        answers = Counter(s.answer for s in train if s.kind == kind)
        assert set(answers) == values, kind
        assert max(answers.values()) / sum(answers.values()) < 0.6, (kind, answers)


def test_test_split_never_repeats_a_train_pair() -> None:
    samples = make_dataset(seed=0, n_train=2000, n_test=500)
    assert not {s.key() for s in samples["train"]} & {s.key() for s in samples["test"]}


def test_record_format(tmp_path: Path) -> None:
    paths = write_shapes_dataset(tmp_path, seed=0, **SMALL)
    for name, n in (("train", SMALL["n_train"]), ("test", SMALL["n_test"]), ("captions", SMALL["n_train"]),
                    ("captions_test", SMALL["n_test"])):
        records = _load(paths[name])
        assert len(records) == n
        assert len({r["id"] for r in records}) == n
        for record in records:
            assert set(record) == {"id", "image", "conversations", "kind"}
            assert not Path(record["image"]).is_absolute() and (tmp_path / record["image"]).is_file()
            human, gpt = record["conversations"]
            assert (human["from"], gpt["from"]) == ("human", "gpt")
            assert human["value"].endswith("\n<image>") and human["value"].count("<image>") == 1
            assert "<image>" not in gpt["value"]
            if name.startswith("captions"):
                split = "test" if name == "captions_test" else "train"
                assert record["kind"] == "caption" and record["image"].startswith(f"images/{split}_")
                assert re.fullmatch(r"a \w+ \w+(, a \w+ \w+)? and a \w+ \w+\.", gpt["value"])
            else:
                assert record["kind"] in KINDS
                assert record["id"].startswith(f"{name}-") and record["image"].startswith(f"images/{name}_")
                assert re.fullmatch(r"[a-z0-9]+", gpt["value"])  # a single lower-case word
