"""Deterministic synthetic VQA data: a few coloured shapes on a plain background, with questions about them.

Every image holds 2 or 3 shapes (circle, square, triangle; each kind at most once, so "the circle" is unambiguous) in
distinct columns of a 3x3 grid (so "left of" is never ambiguous). The questions bind attributes across objects, so a
model must read the image and relate its parts; a blind (text-only) model can reach only chance accuracy:

- ``color_of_shape``  "What color is the circle?"                 -> "red"
- ``count_color``     "How many red shapes are there?"            -> "0".."3"
- ``left_or_right``   "Is the circle left or right of the square?" -> "left" / "right"
- ``shape_at_side``   "What shape is on the left?"                -> "circle"

`write_shapes_dataset` writes the images plus LLaVA-style JSON (``train.json``, ``test.json``, ``captions.json``, and
``captions_test.json``: the test images' captions, held-out pairs for contrastive training and retrieval) and
preference pairs for DPO (``preferences_train.json``, ``preferences_test.json``: each question of the train / test split
with ``chosen`` = its answer and ``rejected`` = a plausible wrong answer of the same kind, see `wrong_answer`; the
format is described in vlmtune/data/preferences.py). Test questions never repeat a train (scene, question) pair, so
neither do the preference splits.
Everything derives from ``random.Random`` streams seeded by the seed and split name, so a seed gives byte-identical
files on every machine. `make_dataset` returns the same samples with their scenes, so tests can check the answers
against the scene (`answer`) and the scene against the pixels (`render`).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

SHAPES_VERSION = 4  # bump whenever the generated data changes, so cached datasets are rewritten

SHAPES = ("circle", "square", "triangle")
# Distinct, saturated colours; all far from the background in RGB, yellow included (blue channel).
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 200, 30),
    "purple": (150, 60, 190),
}
BACKGROUND = (240, 240, 240)
GRID = 3
KINDS = ("color_of_shape", "count_color", "left_or_right", "shape_at_side")
CAPTION_PROMPTS = (
    "Describe the image.",
    "What is in the image?",
    "Describe the picture.",
    "What is in the picture?",
)
MIN_IMAGE_SIZE = 12  # below this a shape is under 3 px and the grid cells leave no room


@dataclass(frozen=True)
class Shape:
    """One shape of a scene: what it is, its grid cell, and its pixel jitter inside that cell.

    ``dx``/``dy`` offset the shape's top-left corner from its cell's top-left pixel, in ``[0, slack]`` where the slack
    is the cell size minus the shape size (see `shape_box`).
    """

    kind: str
    color: str
    row: int
    col: int
    dx: int = 0
    dy: int = 0


Scene = tuple[Shape, ...]  # shapes sorted left to right (by column)


@dataclass(frozen=True)
class Sample:
    """One VQA example: its scene, the question kind with its parameters, and the rendered question and answer."""

    scene: Scene
    kind: str
    params: dict[str, str] = field(hash=False)
    question: str
    answer: str

    def key(self) -> tuple[Any, ...]:
        """Identity of (scene, question), used to keep test samples out of train."""
        return (self.scene, self.kind, tuple(sorted(self.params.items())))


def shape_size(image_size: int) -> int:
    """Side of a shape's bounding box: a quarter of the image, so it fits a third of it with room for jitter."""
    return image_size // 4


def _band(index: int, image_size: int) -> tuple[int, int]:
    """Pixels ``[lo, hi)`` of grid row/column `index`, rounded inwards so neighbouring bands never share a pixel."""
    lo = -(-index * image_size // GRID)  # ceil
    hi = (index + 1) * image_size // GRID  # floor
    return lo, hi


def _slack(index: int, image_size: int) -> int:
    lo, hi = _band(index, image_size)
    return hi - lo - shape_size(image_size)


def shape_box(shape: Shape, image_size: int) -> tuple[int, int, int, int]:
    """Inclusive pixel box ``(x0, y0, x1, y1)`` of a shape; it lies inside the shape's grid cell."""
    size = shape_size(image_size)
    x0 = _band(shape.col, image_size)[0] + shape.dx
    y0 = _band(shape.row, image_size)[0] + shape.dy
    return x0, y0, x0 + size - 1, y0 + size - 1


def shape_center(shape: Shape, image_size: int) -> tuple[int, int]:
    """A pixel that is inside the drawn shape whatever its kind (the triangle is wide enough at mid-height)."""
    x0, y0, _, _ = shape_box(shape, image_size)
    half = shape_size(image_size) // 2
    return x0 + half, y0 + half


def render(scene: Scene, image_size: int = 32) -> Image.Image:
    """Draw a scene. No anti-aliasing (PIL's default), so every shape pixel is exactly its colour."""
    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for shape in scene:
        x0, y0, x1, y1 = shape_box(shape, image_size)
        fill = COLORS[shape.color]
        if shape.kind == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif shape.kind == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        elif shape.kind == "triangle":
            draw.polygon([((x0 + x1) / 2, y0), (x0, y1), (x1, y1)], fill=fill)
        else:
            raise ValueError(f"unknown shape kind {shape.kind!r}")
    return image


def _find(scene: Scene, kind: str) -> Shape:
    for shape in scene:
        if shape.kind == kind:
            return shape
    raise ValueError(f"no {kind} in scene")


def answer(scene: Scene, question_kind: str, **params: str) -> str:
    """The ground-truth answer of a question about a scene, computed from the scene alone (not from any text).

    Parameters per kind: ``color_of_shape(shape)``, ``count_color(color)``, ``left_or_right(shape, other)`` (is
    `shape` left or right of `other`) and ``shape_at_side(side)`` with side ``"left"`` or ``"right"``.
    """
    if question_kind == "color_of_shape":
        return _find(scene, params["shape"]).color
    if question_kind == "count_color":
        return str(sum(shape.color == params["color"] for shape in scene))
    if question_kind == "left_or_right":
        a, b = _find(scene, params["shape"]), _find(scene, params["other"])
        return "left" if a.col < b.col else "right"
    if question_kind == "shape_at_side":
        pick = min if params["side"] == "left" else max
        return pick(scene, key=lambda shape: shape.col).kind
    raise ValueError(f"unknown question kind {question_kind!r}")


def question_text(question_kind: str, **params: str) -> str:
    """The question's wording (without the image placeholder)."""
    if question_kind == "color_of_shape":
        return f"What color is the {params['shape']}?"
    if question_kind == "count_color":
        return f"How many {params['color']} shapes are there?"
    if question_kind == "left_or_right":
        return f"Is the {params['shape']} left or right of the {params['other']}?"
    if question_kind == "shape_at_side":
        return f"What shape is on the {params['side']}?"
    raise ValueError(f"unknown question kind {question_kind!r}")


def wrong_answer(sample: Sample, rng: random.Random) -> str:
    """A plausible wrong answer of the same kind as `sample.answer`, for preference pairs.

    Where the image offers one, the wrong answer is in it: the colour of *another* shape (an attribute-binding
    mistake), another shape of the scene for a side; otherwise another colour, another count in 0..3, the other side.
    """
    if sample.kind == "color_of_shape":
        pool = sorted({shape.color for shape in sample.scene} - {sample.answer}) or [
            color for color in COLORS if color != sample.answer]
    elif sample.kind == "count_color":
        pool = [str(count) for count in range(4) if str(count) != sample.answer]
    elif sample.kind == "left_or_right":
        pool = ["right" if sample.answer == "left" else "left"]
    elif sample.kind == "shape_at_side":
        pool = [shape.kind for shape in sample.scene if shape.kind != sample.answer]  # 2 or 3 shapes: never empty
    else:
        raise ValueError(f"unknown question kind {sample.kind!r}")
    return rng.choice(pool)


def caption(scene: Scene) -> str:
    """Shapes listed left to right, e.g. "a red circle, a blue square and a green triangle."."""
    parts = [f"a {shape.color} {shape.kind}" for shape in scene]
    return (", ".join(parts[:-1]) + " and " + parts[-1] + ".") if len(parts) > 1 else parts[0] + "."


def _scene(rng: random.Random, colors: Sequence[str], image_size: int, jitter: bool = False) -> Scene:
    """Random kinds, distinct columns, any rows and jitter for shapes of the given colours.

    Without `jitter` every shape is centred in its cell (the RNG stream is the same, so the scenes are too).
    """
    kinds = rng.sample(SHAPES, len(colors))
    cols = rng.sample(range(GRID), len(colors))
    shapes = []
    for kind, color, col in zip(kinds, colors, cols, strict=True):
        row = rng.randrange(GRID)
        dx = rng.randint(0, _slack(col, image_size))
        dy = rng.randint(0, _slack(row, image_size))
        if not jitter:
            dx, dy = _slack(col, image_size) // 2, _slack(row, image_size) // 2
        shapes.append(Shape(kind, color, row, col, dx, dy))
    return tuple(sorted(shapes, key=lambda shape: shape.col))


def _sample(rng: random.Random, kind: str, image_size: int, jitter: bool = False) -> Sample:
    if kind == "count_color":
        # Draw the answer first, then a scene that has it: counts are uniform over 0..3 instead of mostly "1"
        # (which is what asking about a random colour of a random scene gives).
        count = rng.randrange(4)
        n = 3 if count == 3 else rng.choice((2, 3))
        color = rng.choice(list(COLORS))
        others = [c for c in COLORS if c != color]
        chosen = set(rng.sample(range(n), count))
        scene = _scene(rng, [color if i in chosen else rng.choice(others) for i in range(n)], image_size, jitter)
        params = {"color": color}
    else:
        n = rng.choice((2, 3))
        scene = _scene(rng, [rng.choice(list(COLORS)) for _ in range(n)], image_size, jitter)
        if kind == "color_of_shape":
            params = {"shape": rng.choice(scene).kind}
        elif kind == "left_or_right":
            a, b = rng.sample(scene, 2)  # random order: "left" and "right" are equally likely
            params = {"shape": a.kind, "other": b.kind}
        else:
            params = {"side": rng.choice(("left", "right"))}
    return Sample(scene, kind, params, question_text(kind, **params), answer(scene, kind, **params))


def make_samples(
    seed: int,
    split: str,
    n: int,
    image_size: int = 32,
    exclude: frozenset[tuple[Any, ...]] = frozenset(),
    jitter: bool = False,
) -> list[Sample]:
    """`n` samples of a split, from the split's own RNG stream; samples whose `Sample.key` is in `exclude` are redrawn.

    Question kinds are exactly balanced (a shuffled list of equal counts), so per-kind accuracy is comparable.
    """
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be >= {MIN_IMAGE_SIZE}, got {image_size}")
    # A string seed is hashed with SHA-512 by `random`, so it is stable across processes (unlike hash()).
    rng = random.Random(f"vlmtune-shapes:{seed}:{split}")
    kinds = [KINDS[i % len(KINDS)] for i in range(n)]
    rng.shuffle(kinds)
    samples = []
    for kind in kinds:
        sample = _sample(rng, kind, image_size, jitter)
        while sample.key() in exclude:
            sample = _sample(rng, kind, image_size, jitter)
        samples.append(sample)
    return samples


def make_dataset(
    seed: int = 0, n_train: int = 4000, n_test: int = 500, image_size: int = 32, jitter: bool = False
) -> dict[str, list[Sample]]:
    """Train and test samples exactly as `write_shapes_dataset` writes them; test never repeats a train pair."""
    train = make_samples(seed, "train", n_train, image_size, jitter=jitter)
    test = make_samples(seed, "test", n_test, image_size, exclude=frozenset(s.key() for s in train), jitter=jitter)
    return {"train": train, "test": test}


def _record(record_id: str, image: str, prompt: str, reply: str, kind: str) -> dict[str, Any]:
    return {
        "id": record_id,
        "image": image,
        # The question comes before the image: under causal attention the image tokens can then attend to the
        # question, and a tiny model trained from scratch learns the relational questions within the demo's budget
        # (with the image first, left/right stayed at chance in 5 epochs). LLaVA data uses both orders.
        "conversations": [{"from": "human", "value": f"{prompt}\n<image>"}, {"from": "gpt", "value": reply}],
        "kind": kind,
    }


def _preference_record(record_id: str, image: str, prompt: str, chosen: str, rejected: str,
                       kind: str) -> dict[str, Any]:
    """One preference pair (format: vlmtune/data/preferences.py); the prompt is worded exactly like the SFT record."""
    return {"id": record_id, "image": image, "prompt": [{"from": "human", "value": f"{prompt}\n<image>"}],
            "chosen": chosen, "rejected": rejected, "kind": kind}


def _write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically, so a reader (or a crash) never sees a half-written file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_shapes_dataset(
    out_dir: Path,
    *,
    seed: int = 0,
    n_train: int = 4000,
    n_test: int = 500,
    image_size: int = 32,
    jitter: bool = False,
) -> dict[str, Path]:
    """Write the dataset under `out_dir` and return the paths of its JSON files (``train``, ``test``, ``captions``,
    ``captions_test``, ``preferences_train``, ``preferences_test``).

    ``meta.json`` is written last and marks a complete dataset: when it matches the parameters nothing is done;
    otherwise the dataset is regenerated from scratch (stale images of a larger earlier run are removed).
    """
    out_dir = Path(out_dir)
    paths = {name: out_dir / f"{name}.json"
             for name in ("train", "test", "captions", "captions_test", "preferences_train", "preferences_test")}
    meta = {"version": SHAPES_VERSION, "seed": seed, "n_train": n_train, "n_test": n_test, "image_size": image_size,
            "jitter": jitter}
    meta_path = out_dir / "meta.json"
    complete = meta_path.exists() and all(p.exists() for p in paths.values())
    if complete and json.loads(meta_path.read_text(encoding="utf-8")) == meta:
        return paths

    out_dir.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)  # an interrupted regeneration must not pass for a complete one
    image_dir = out_dir / "images"
    shutil.rmtree(image_dir, ignore_errors=True)
    image_dir.mkdir()
    render((), image_size).save(out_dir / "blank.png")

    samples = make_dataset(seed, n_train, n_test, image_size, jitter)
    records: dict[str, list[dict[str, Any]]] = {}
    for split, split_samples in samples.items():
        records[split] = []
        for i, sample in enumerate(split_samples):
            image = f"images/{split}_{i:05d}.png"
            render(sample.scene, image_size).save(out_dir / image)
            records[split].append(_record(f"{split}-{i:05d}", image, sample.question, sample.answer, sample.kind))
    # Caption prompts come from their own stream, so captions never shift the VQA samples.
    rng = random.Random(f"vlmtune-shapes:{seed}:captions")
    records["captions"] = [
        _record(
            f"caption-{i:05d}", f"images/train_{i:05d}.png", rng.choice(CAPTION_PROMPTS), caption(s.scene), "caption"
        )
        for i, s in enumerate(samples["train"])
    ]
    rng = random.Random(f"vlmtune-shapes:{seed}:captions:test")
    records["captions_test"] = [
        _record(f"caption-test-{i:05d}", f"images/test_{i:05d}.png", rng.choice(CAPTION_PROMPTS), caption(s.scene),
                "caption")
        for i, s in enumerate(samples["test"])
    ]
    # Wrong answers come from their own stream per split, so the preference pairs never shift the VQA samples.
    for split, split_samples in samples.items():
        rng = random.Random(f"vlmtune-shapes:{seed}:preferences:{split}")
        records[f"preferences_{split}"] = [
            _preference_record(f"pref-{split}-{i:05d}", f"images/{split}_{i:05d}.png", sample.question,
                               sample.answer, wrong_answer(sample, rng), sample.kind)
            for i, sample in enumerate(split_samples)
        ]
    for name, path in paths.items():
        _write_json(path, records[name])
    _write_json(meta_path, meta)
    return paths
