"""Short answers scored against their targets without the VQA tables: ANLS, relaxed accuracy, GQA exact match.

* ANLS (DocVQA, InfoVQA): EvolvingLMMs-Lab/lmms-eval `lmms_eval/api/metrics.py` (`anls`), the same rule as
  open-compass/VLMEvalKit `vlmeval/dataset/utils/vqa_eval.py` (`anls_compute`);
* relaxed accuracy (ChartQA): google-research/pix2struct `pix2struct/metrics.py` (`relaxed_correctness`), copied by
  lmms-eval `lmms_eval/tasks/chartqa/utils.py` and VLMEvalKit `vlmeval/dataset/utils/vqa_eval.py`;
* GQA exact match, per `mode`: lmms-eval `lmms_eval/tasks/gqa/gqa.yaml` (metric `exact_match` with `ignore_case`
  and `ignore_punctuation`: `lmms_eval/api/metrics.py`, `exact_match_hf_evaluate`), haotian-liu/LLaVA
  `scripts/convert_gqa_for_eval.py`, VLMEvalKit `vlmeval/dataset/utils/vqa_eval.py` (`process_line`, "accuracy").
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import Literal


def levenshtein(a: str, b: str) -> int:
    """Character-level edit distance with unit costs."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def anls(pred: str, answers: Sequence[str], threshold: float = 0.5) -> float:
    """Average Normalised Levenshtein Similarity of one question (DocVQA/InfoVQA).

    Distance on lower-cased, whitespace-collapsed strings; the length normaliser uses the **raw** strings'
    ``.upper()`` lengths (reference-code behaviour). ``score = 1 - min_i NL_i``; ``score < threshold`` gives 0
    (so exactly 0.5 is kept). Both empty -> 1.0.
    """
    if not answers:
        raise ValueError("anls needs at least one ground-truth answer")
    det = " ".join(pred.strip().lower().split())
    values = []
    for answer in answers:
        gt = " ".join(answer.strip().lower().split())
        length = max(len(answer.upper()), len(pred.upper()))
        values.append(0.0 if length == 0 else levenshtein(gt, det) / length)
    score = 1.0 - min(values)
    return 0.0 if score < threshold else score


def _to_float(text: str) -> float | None:
    """pix2struct ``_to_float``: a trailing ``%`` divides by 100; anything ``float()`` rejects is not a number."""
    try:
        if text.endswith("%"):
            return float(text.rstrip("%")) / 100.0
        return float(text)
    except ValueError:
        return None


def relaxed_correctness(prediction: str, target: str, tol: float = 0.05) -> bool:
    """pix2struct relaxed correctness of one (prediction, target) pair.

    The relative change is divided by the **target** (argument order matters; VLMEvalKit issue #584 was a swapped
    call). quirk: a target that parses to 0.0 is falsy upstream and falls through to the string comparison.
    """
    pred_f, target_f = _to_float(prediction), _to_float(target)
    if pred_f is not None and target_f:
        return abs(pred_f - target_f) / abs(target_f) <= tol
    return prediction.lower() == target.lower()


def relaxed_accuracy(pred: str, targets: Sequence[str], tol: float = 0.05) -> float:
    """ChartQA relaxed accuracy: 1.0 if the stripped prediction is within ``tol`` of any target.

    Numbers get a relative tolerance (``<=`` inclusive, ``%`` converts to a fraction, years included); everything
    else is a case-insensitive exact match with no punctuation stripping (``"Yes."`` != ``"yes"``).
    """
    if not targets:
        raise ValueError("relaxed_accuracy needs at least one target")
    pred = pred.strip()
    return 1.0 if any(relaxed_correctness(pred, t, tol) for t in targets) else 0.0


GqaMode = Literal["canonical", "lmms_eval", "llava", "vlmevalkit"]
_PUNCT_DELETE = str.maketrans("", "", string.punctuation)


def gqa_exact_match(pred: str, answer: str, mode: GqaMode | str = "canonical") -> float:
    """GQA exact match. No article removal in any mode (``"the table"`` != ``"table"``).

    * ``canonical`` / ``lmms_eval``: strip the prediction, lower-case both, delete every ``string.punctuation``
      character (HF ``exact_match`` with ``ignore_case`` and ``ignore_punctuation``);
    * ``llava``: ``pred.rstrip('.').lower() == answer`` (LLaVA ``convert_gqa_for_eval.py`` + GQA ``eval.py``);
    * ``vlmevalkit``: ``answer.strip().lower() == pred.strip().lower()``.
    """
    if mode in ("canonical", "lmms_eval"):
        return float(pred.strip().lower().translate(_PUNCT_DELETE) == answer.lower().translate(_PUNCT_DELETE))
    if mode == "llava":
        return float(pred.rstrip(".").lower() == answer)
    if mode == "vlmevalkit":
        return float(answer.strip().lower() == pred.strip().lower())
    raise ValueError(f"unknown GQA mode {mode!r}")
