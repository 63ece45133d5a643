"""POPE: yes/no answers and accuracy / precision / recall / F1 / yes-ratio.

Follows, per `mode`: ``official``: RUCAIBox/POPE `evaluate.py`, the same rule as haotian-liu/LLaVA
`llava/eval/eval_pope.py`; ``lmms_eval``: EvolvingLMMs-Lab/lmms-eval `lmms_eval/tasks/pope/utils.py`
(`pope_process_results` and the `pope_aggregate_*` functions); ``vlmevalkit``: open-compass/VLMEvalKit
`vlmeval/dataset/utils/yorn.py` (`YOrN_Extraction`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Literal

from vlmtune.eval.metrics.vqa import process_punctuation

PopeMode = Literal["official", "lmms_eval", "vlmevalkit"]


def pope_label(text: str, mode: PopeMode | str = "official") -> Literal["yes", "no"] | None:
    """Parse a yes/no answer; ``None`` means unparsed.

    * ``official`` (POPE ``evaluate.py`` == LLaVA ``eval_pope.py``, vlmtune's default): keep the text before the
      first ``.``, delete ``,``, split on single spaces; ``no`` if ``No``/``no``/``not`` is a word, else **yes**
      (so empty output, ``NO``, ``Nope`` count as yes; never ``None``);
    * ``lmms_eval``: ``text.lower().strip()`` must be exactly ``yes`` or ``no``;
    * ``vlmevalkit`` (``YOrN_Extraction``): lower-case, VQA punctuation processing, split; ``yes`` iff ``yes`` is a
      word and ``no`` is not, ``no`` for the reverse, else ``None`` ("Unknown").
    """
    if mode in ("official", "canonical"):
        if "." in text:
            text = text.split(".")[0]
        words = text.replace(",", "").split(" ")
        return "no" if ("No" in words or "not" in words or "no" in words) else "yes"
    if mode == "lmms_eval":
        answer = text.lower().strip()
        return answer if answer in ("yes", "no") else None  # type: ignore[return-value]
    if mode == "vlmevalkit":
        words = process_punctuation(text.lower(), "vlmevalkit").split()
        has_yes, has_no = "yes" in words, "no" in words
        if has_yes and not has_no:
            return "yes"
        if has_no and not has_yes:
            return "no"
        return None
    raise ValueError(f"unknown POPE mode {mode!r}")


def _ratio(num: float, den: float, name: str) -> float:
    if den == 0:
        # The upstream scripts crash here; vlmtune reports 0 and says so.
        warnings.warn(f"pope_metrics: {name} has a zero denominator; reporting 0.0", stacklevel=3)
        return 0.0
    return num / den


def pope_metrics(
    preds: Sequence[str], labels: Sequence[str], mode: PopeMode | str = "official"
) -> dict[str, float | int]:
    """POPE accuracy / precision / recall / F1 / yes-ratio over raw model outputs.

    Positive class = ``yes``; ``labels`` are the ground-truth ``yes``/``no`` strings. Answers are parsed with
    :func:`pope_label` (``mode``). Unparsed answers are wrong for accuracy; in ``lmms_eval`` mode they are neither
    TP/FP nor FN (only an explicit ``no`` is a false negative) and ``yes_ratio`` is computed from the **labels**
    (upstream bug, kept for parity); in ``vlmevalkit`` mode they count as "not yes". Zero denominators give 0.0 with
    a warning. Returns ``accuracy, precision, recall, f1, yes_ratio, n_unparsed`` and the counts ``TP, FP, TN, FN``.
    """
    if len(preds) != len(labels):
        raise ValueError(f"{len(preds)} predictions for {len(labels)} labels")
    gts = [label.lower().strip() for label in labels]
    if any(g not in ("yes", "no") for g in gts):
        raise ValueError("POPE labels must be 'yes' or 'no'")
    parsed = [pope_label(p, mode) for p in preds]
    pairs = list(zip(parsed, gts, strict=True))
    tp = sum(p == "yes" and g == "yes" for p, g in pairs)
    fp = sum(p == "yes" and g == "no" for p, g in pairs)
    tn = sum(p == "no" and g == "no" for p, g in pairs)
    if mode == "vlmevalkit":
        fn = sum(p != "yes" and g == "yes" for p, g in pairs)
    else:
        fn = sum(p == "no" and g == "yes" for p, g in pairs)
    n = len(pairs)
    precision = _ratio(tp, tp + fp, "precision")
    recall = _ratio(tp, tp + fn, "recall")
    f1 = _ratio(2 * precision * recall, precision + recall, "f1")
    if mode == "lmms_eval":
        yes_ratio = _ratio(sum(g == "yes" for g in gts), n, "yes_ratio")
    else:
        yes_ratio = _ratio(sum(p == "yes" for p in parsed), n, "yes_ratio")
    return {
        "accuracy": _ratio(tp + tn, n, "accuracy"),  # == mean(parsed == label); unparsed answers are wrong
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": yes_ratio,
        "n_unparsed": sum(p is None for p in parsed),
        "TP": tp,
        "FP": fp,
        "TN": tn,
        "FN": fn,
    }
