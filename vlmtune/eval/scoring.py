"""Task scoring: exact-key registries of per-sample scorers and of aggregations, named by a task's metric_list.

A row is one prediction: `{id, prediction, target, choices, kind, ...}`. A scorer turns all rows into per-sample
values (a list, because CIDEr-D of one caption depends on the whole corpus); an aggregation turns the values (and the
rows) into the task's numbers. Both run once, on the gathered predictions, so the result does not depend on how
documents were split across processes. The metric functions themselves are `vlmtune.eval.metrics`.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from vlmtune.errors import ConfigError
from vlmtune.eval import metrics as m
from vlmtune.registry import Registry

Row = dict[str, Any]
Scorer = Callable[..., list[float]]  # (rows, **kwargs) -> one value per row
Aggregation = Callable[..., dict[str, float]]  # (name, values, rows, **kwargs) -> reported numbers

SCORERS: Registry[Scorer] = Registry("eval.task.metric_list[].metric")
AGGREGATIONS: Registry[Aggregation] = Registry("eval.task.metric_list[].aggregation")


def _answers(row: Row) -> list[str]:
    return [row["target"]] if isinstance(row["target"], str) else list(row["target"])


def _per_sample(name: str):
    """Register `fn(prediction, row, **kwargs) -> float` as a scorer applied row by row."""

    def decorator(fn: Callable[..., float]) -> Callable[..., float]:
        SCORERS.add(name, lambda rows, **kwargs: [float(fn(r["prediction"], r, **kwargs)) for r in rows])
        return fn

    return decorator


def normalize(answer: str) -> str:
    """Light normalisation for single-word answers: case, surrounding space and a trailing full stop."""
    return answer.strip().lower().rstrip(".").strip()


@_per_sample("exact_match")
def exact_match(pred: str, row: Row) -> float:
    """The synthetic set's score: equal after `normalize` (to any reference when there are several)."""
    return float(any(normalize(pred) == normalize(a) for a in _answers(row)))


@_per_sample("vqa_accuracy")
def vqa_accuracy(pred: str, row: Row, mode: str = "canonical") -> float:
    return m.vqa_accuracy(pred, _answers(row), mode=mode)


@_per_sample("anls")
def anls(pred: str, row: Row, threshold: float = 0.5) -> float:
    return m.anls(pred, _answers(row), threshold=threshold)


@_per_sample("relaxed_accuracy")
def relaxed_accuracy(pred: str, row: Row, tol: float = 0.05) -> float:
    return m.relaxed_accuracy(pred, _answers(row), tol=tol)


@_per_sample("gqa_exact_match")
def gqa_exact_match(pred: str, row: Row, mode: str = "canonical") -> float:
    return max(m.gqa_exact_match(pred, a, mode=mode) for a in _answers(row))


@_per_sample("scienceqa_match")
def scienceqa_match(pred: str, row: Row, mode: str = "lmms_eval") -> float:
    return m.scienceqa_match(pred, row["target"], mode=mode, n_choices=len(row["choices"] or {}))


def mc_letter(pred: str, row: Row, version: str = "post1175") -> str | None:
    """The option letter read from a prediction (VLMEvalKit rule-based `can_infer`); None = no parse."""
    return m.extract_choice_vlmeval(pred, row["choices"], version)


@_per_sample("mc_accuracy")
def mc_accuracy(pred: str, row: Row, version: str = "post1175") -> float:
    return float(mc_letter(pred, row, version) == row["target"])


def mmmu_letter(pred: str, row: Row) -> str | None:
    return m.extract_choice_mmmu(pred, row["choices"])  # None where upstream would draw a random letter


@_per_sample("mmmu_accuracy")
def mmmu_accuracy(pred: str, row: Row) -> float:
    """MMMU's official parsers: a letter for multiple choice (no parse = wrong), `eval_open` for open questions."""
    if row["choices"]:
        return float(mmmu_letter(pred, row) == row["target"])
    return float(m.mmmu_open_correct(row["target"], m.mmmu_open_parse(pred)))


@_per_sample("pope_accuracy")
def pope_accuracy(pred: str, row: Row, mode: str = "official") -> float:
    return float(m.pope_label(pred, mode) == row["target"].strip().lower())


@_per_sample("image_to_text_hit")
def image_to_text_hit(pred: str, row: Row, ks: Sequence[int] = (1,), **_: Any) -> float:
    """Retrieval tasks: whether the doc's image ranks one of its captions within the first `ks[0]`."""
    return float(row["image_to_text_rank"] < ks[0])


def _captions(rows: Sequence[Row]) -> tuple[dict[str, str], dict[str, list[str]]]:
    return {r["id"]: r["prediction"] for r in rows}, {r["id"]: _answers(r) for r in rows}


@SCORERS.register("cider")
def cider(rows: Sequence[Row], tokenize: str = "ptb", backend: str = "auto", **_: Any) -> list[float]:
    """Per-image CIDEr-D; it depends on every image scored together (IDF), so only the whole corpus is meaningful."""
    preds, refs = _captions(rows)
    _, per_image = m.caption_scores_detailed(preds, refs, metrics=["CIDEr"], tokenize=tokenize, backend=backend)
    return [per_image[r["id"]]["CIDEr"] for r in rows]


# --- aggregations ------------------------------------------------------------------------------------------------


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values) if values else 0.0


def _by_kind(rows: Sequence[Row], values: Sequence[float]) -> dict[str, list[float]]:
    groups: dict[str, list[float]] = defaultdict(list)
    for row, value in zip(rows, values, strict=True):
        if row.get("kind"):
            groups[row["kind"]].append(value)
    return dict(sorted(groups.items()))


@AGGREGATIONS.register("mean")
def mean(name: str, values: Sequence[float], rows: Sequence[Row], **_: Any) -> dict[str, float]:
    """The mean, and the mean per breakdown value (`<name>/<value>`) when the rows carry one."""
    return {name: _mean(values)} | {f"{name}/{k}": _mean(v) for k, v in _by_kind(rows, values).items()}


@AGGREGATIONS.register("pope")
def pope(name: str, values: Sequence[float], rows: Sequence[Row], mode: str = "official", **_: Any):
    """POPE accuracy / precision / recall / F1 / yes-ratio overall and per split (`category`), and the means over
    splits that papers report (LLaVA-1.5: mean F1)."""
    preds, labels = [r["prediction"] for r in rows], [r["target"] for r in rows]
    out: dict[str, float] = {k: v for k, v in m.pope_metrics(preds, labels, mode).items()
                             if k in ("accuracy", "precision", "recall", "f1", "yes_ratio", "n_unparsed")}
    splits = sorted({r["kind"] for r in rows if r.get("kind")})
    for split in splits:
        chosen = [r for r in rows if r.get("kind") == split]
        part = m.pope_metrics([r["prediction"] for r in chosen], [r["target"] for r in chosen], mode)
        out |= {f"{k}/{split}": float(part[k]) for k in ("accuracy", "precision", "recall", "f1", "yes_ratio")}
    if len(splits) > 1:
        out["mean_f1"] = _mean([out[f"f1/{s}"] for s in splits])
        out["mean_accuracy"] = _mean([out[f"accuracy/{s}"] for s in splits])
    return out


@AGGREGATIONS.register("mmbench_circular")
def mmbench_circular(name: str, values: Sequence[float], rows: Sequence[Row], version: str = "post1175", **_: Any):
    """Circular accuracy (every rotated copy `index + k * 1e6` right), vanilla accuracy over all copies, circular
    accuracy per category, and how many predictions had no readable letter."""
    records = [(int(r["id"]), r["prediction"], r["target"], r["choices"]) for r in rows]
    groups = m.mmbench_groups(records)
    out = {name: m.mmbench_circular(groups, version=version), f"{name}_vanilla": _mean(values)}
    kinds = {int(r["id"]) % 1_000_000: r.get("kind") for r in rows if int(r["id"]) < 1_000_000}
    for kind in sorted({k for k in kinds.values() if k}):
        chosen = {key: copies for key, copies in groups.items() if kinds.get(key) == kind}
        out[f"{name}/{kind}"] = m.mmbench_circular(chosen, version=version)
    out["n_unparsed"] = sum(mc_letter(r["prediction"], r, version) is None for r in rows)
    return out


_MMMU_SUBJECT = re.compile(r"^[a-z]+_(.+?)_\d+$")  # validation_Art_Theory_12 -> Art_Theory
# MMMU's six disciplines and their 30 subjects (MMMU's DOMAIN_CAT2SUB_CAT), reported like its own evaluation.
MMMU_DISCIPLINES = {
    "Art_and_Design": ("Art", "Art_Theory", "Design", "Music"),
    "Business": ("Accounting", "Economics", "Finance", "Manage", "Marketing"),
    "Science": ("Biology", "Chemistry", "Geography", "Math", "Physics"),
    "Health_and_Medicine": ("Basic_Medical_Science", "Clinical_Medicine", "Diagnostics_and_Laboratory_Medicine",
                            "Pharmacy", "Public_Health"),
    "Humanities_and_Social_Science": ("History", "Literature", "Sociology", "Psychology"),
    "Tech_and_Engineering": ("Agriculture", "Architecture_and_Engineering", "Computer_Science", "Electronics",
                             "Energy_and_Power", "Materials", "Mechanical_Engineering"),
}


@AGGREGATIONS.register("mmmu")
def mmmu(name: str, values: Sequence[float], rows: Sequence[Row], **_: Any) -> dict[str, float]:
    """Accuracy overall, per discipline (both instance-weighted, as MMMU's `calculate_ins_level_acc`) and per subject
    (from the doc id), and how many multiple-choice answers had no readable letter (upstream would have guessed at
    random)."""
    subjects: dict[str, list[float]] = defaultdict(list)
    for row, value in zip(rows, values, strict=True):
        match = _MMMU_SUBJECT.match(row["id"])
        subjects[match.group(1) if match else "unknown"].append(value)
    out = {name: _mean(values)}
    for discipline, members in MMMU_DISCIPLINES.items():
        pooled = [v for subject in members for v in subjects.get(subject, [])]
        if pooled:
            out[f"{name}/{discipline}"] = _mean(pooled)
    out |= {f"{name}/{s}": _mean(v) for s, v in sorted(subjects.items())}
    out["n_unparsed"] = sum(bool(r["choices"]) and mmmu_letter(r["prediction"], r) is None for r in rows)
    return out


@AGGREGATIONS.register("retrieval")
def retrieval(name: str, values: Sequence[float], rows: Sequence[Row], ks: Sequence[int] = (1, 5, 10),
              **_: Any) -> dict[str, float]:
    """Recall@k image->text (over images) and text->image (over distinct captions), and zero-shot classification
    accuracy when the rows carry classes (vlmtune.eval.retrieval)."""
    text_ranks = [rank for row in rows for rank in row["text_to_image_ranks"]]
    out = {f"image_to_text/recall@{k}": _mean([float(r["image_to_text_rank"] < k) for r in rows]) for k in ks}
    out |= {f"text_to_image/recall@{k}": _mean([float(rank < k) for rank in text_ranks]) for k in ks}
    if rows and "label" in rows[0]:
        out["zero_shot/accuracy"] = _mean([float(r["zero_shot_prediction"] == r["label"]) for r in rows])
        out["zero_shot/classes"] = len({r["label"] for r in rows})
    return out


@AGGREGATIONS.register("coco_caption")
def coco_caption(name: str, values: Sequence[float], rows: Sequence[Row], tokenize: str = "ptb",
                 backend: str = "auto", **_: Any) -> dict[str, float]:
    """BLEU-1..4, ROUGE-L, CIDEr-D (and METEOR where java and pycocoevalcap are installed) over the whole corpus."""
    preds, refs = _captions(rows)
    return m.caption_scores(preds, refs, tokenize=tokenize, backend=backend)


def check_metric_list(task) -> None:
    """Every scorer and aggregation a task names exists (an error lists the valid keys) — before any heavy work."""
    if not task.metric_list:
        raise ConfigError(f"task {task.task}: eval.task.metric_list is empty; name at least one metric")
    for entry in task.metric_list:
        SCORERS.get(entry.metric)
        AGGREGATIONS.get(entry.aggregation)


def score_rows(task, rows: list[Row]) -> dict[str, float]:
    """Per-sample `score` on every row (from the first metric) and the task's aggregated numbers (plus `n`)."""
    check_metric_list(task)
    results: dict[str, float] = {}
    for i, entry in enumerate(task.metric_list):
        kwargs = dict(entry.kwargs)
        values = SCORERS.get(entry.metric)(rows, **kwargs) if rows else []
        if i == 0:
            for row, value in zip(rows, values, strict=True):
                row["score"] = value
        results |= AGGREGATIONS.get(entry.aggregation)(entry.name or entry.metric, values, rows, **kwargs)
    results["n"] = len(rows)
    return results
