"""Multiple-choice answer letters (MMBench, ScienceQA, ...) and MMBench's circular evaluation.

Follows, per `version` / `mode`:
* open-compass/VLMEvalKit `vlmeval/utils/matching_util.py` (`can_infer_option`, `can_infer_text`; ``post1175`` is
  after its PR #1175 and #1552, ``pre1175`` before) and `vlmeval/dataset/utils/multiple_choice.py`
  (`eval_circular_group`: circular accuracy);
* EvolvingLMMs-Lab/lmms-eval `lmms_eval/tasks/mmbench/mmbench_evals.py` (`MMBench_Evaluator.can_infer_option`),
  `lmms_eval/tasks/_task_utils/mcq_extract.py` (`extract_mcq_answer`) and `lmms_eval/tasks/scienceqa/utils.py`
  (`sqa_process_results`);
* haotian-liu/LLaVA `llava/eval/eval_science_qa.py`.
MMMU's own letter parser is in mmmu.py.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

VlmevalVersion = Literal["post1175", "pre1175", "lmms_eval_mmbench", "lmms_eval_static", "llava_sqa"]
_VLMEVAL_REFUSALS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)
_VLMEVAL_SEPARATORS = ".()[],:;!*#{}"
_VLMEVAL_ANSWER_IS_RE = re.compile(r"(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**")  # VLMEvalKit PR #1552


def _vlmeval_can_infer_option(answer: str, choices: Mapping[str, str], post1175: bool) -> str | None:
    if "Failed to obtain answer via API" in answer:
        return None
    if any(refusal in answer for refusal in _VLMEVAL_REFUSALS):
        return "Z"
    answer_mod = answer
    for ch in _VLMEVAL_SEPARATORS:
        answer_mod = answer_mod.replace(ch, " ")
    splits = answer_mod.split()
    present = [c for c in choices if c in splits]
    if len(present) == 1:
        # PR #1175: the letter must be among the last 4 tokens (rejects "B. Because ... long reasoning").
        if not post1175 or splits.index(present[0]) > len(splits) - 5:
            return present[0]
    elif not present and "Z" in splits:
        return "Z"
    if post1175:
        match = _VLMEVAL_ANSWER_IS_RE.search(answer)
        if match and match.group(1).upper() in choices:
            return match.group(1).upper()
    return None


def _vlmeval_can_infer_text(answer: str, choices: Mapping[str, str], length_limit: bool) -> str | None:
    lowered = answer.lower()
    # PR #1175: answers longer than twice the total option text are not text-matched.
    if length_limit and len(lowered) > 2 * sum(len(str(v)) for v in choices.values()):
        return None
    candidates = [k for k, v in choices.items() if str(v).lower() in lowered]
    return candidates[0] if len(candidates) == 1 else None


# lmms-eval MMBench (`mmbench_evals.py`): an older copy of VLMEvalKit's logic, kept for parity.
_LMMS_MMBENCH_LETTERS = "ABCDE"  # quirk: `num_choice=5` whatever the item's options
_LMMS_MMBENCH_AFFIXES = (
    ("", "."), ("", ","), ("", ":"), ("", ")"), ("", ")."), ("(", ")"), ("(", ")."),
    (":", ""), (":", ","), (":", "."), (":", ")"), (":", ")."),
)


def _lmms_mmbench_can_infer_option(answer: str) -> str | None:
    if "Failed to obtain answer via API" in answer:
        return None
    splits = answer.split()

    def count(prefix: str = "", suffix: str = "") -> int:
        return sum(prefix + c + suffix in splits for c in _LMMS_MMBENCH_LETTERS)

    if count() == 1:
        for ch in _LMMS_MMBENCH_LETTERS:
            if "A" in splits and len(splits) > 3:  # quirk: "A" may be an article; fall through to the affixes
                break
            if ch in splits:
                return ch
    for prefix, suffix in _LMMS_MMBENCH_AFFIXES:
        if count(prefix, suffix) == 1:
            for ch in _LMMS_MMBENCH_LETTERS:
                if prefix + ch + suffix in splits:
                    return ch
    return None


# lmms-eval `_task_utils/mcq_extract.py::extract_mcq_answer` (static regex/priority extractor).
_LMMS_STATIC_PHRASES = (
    "the answer is", "answer is", "the correct answer is", "correct answer is", "the best answer is",
    "best answer is", "the correct option is", "correct option is", "the best option is", "best option is",
    "the choice is", "choice is", "the correct choice is", "correct choice is", "i choose", "i select", "i pick",
    "my answer is", "my choice is", "옵션", "정답은", "답은", "답:", "答案是", "答案为", "选", "答えは",
)
_LMMS_STATIC_PRIORITY = {
    "start": 10, "end": 9, "phrase": 7, "parentheses": 6, "period": 5, "colon": 4, "right_paren": 3, "space": 2,
    "fallback": 0,
}
_LMMS_STATIC_FORMATS = (
    ("parentheses", "({})"), ("period", "{}."), ("colon", "{}:"), ("right_paren", "{})"), ("space", "{} "),
)


def _lmms_static_extract(response: str, letters: Sequence[str]) -> str | None:
    if not response.strip():
        return None
    text = response.strip()
    for ch in (",", ".", "!", "?", ";", ":", "'", '"'):
        text = text.strip(ch)
    text = f" {text} "
    candidates: list[tuple[str, int, str]] = []
    for name, pattern in _LMMS_STATIC_FORMATS:
        for ch in letters:
            needle = pattern.format(ch)
            if needle in text:
                candidates.append((ch, text.rfind(needle), name))
    lowered = text.lower()
    for phrase in _LMMS_STATIC_PHRASES:
        idx = lowered.find(phrase)
        if idx != -1:
            for ch in letters:
                pos = text.find(ch, idx + len(phrase))
                if pos != -1:
                    candidates.append((ch, pos, "phrase"))
    stripped = text.strip()
    for ch in letters:
        if stripped.startswith(ch) and (len(stripped) == 1 or not stripped[1].isalpha()):
            candidates.append((ch, 0, "start"))
    for ch in letters:
        if stripped.endswith(ch) and (len(stripped) == 1 or not stripped[-2].isalpha()):
            candidates.append((ch, len(text) - 1, "end"))
    if not candidates:
        candidates = [(ch, text.rfind(ch), "fallback") for ch in letters if ch in text]
    if not candidates:
        return None
    # Stable sort, highest priority then latest position first (same as upstream's sort(reverse=True)).
    candidates.sort(key=lambda c: (_LMMS_STATIC_PRIORITY[c[2]], c[1]), reverse=True)
    return candidates[0][0]


# LLaVA `llava/eval/eval_science_qa.py`.
_LLAVA_SQA_OPTIONS = ("A", "B", "C", "D", "E")
_LLAVA_ANSWER_IS_RE = re.compile(r"The answer is ([A-Z]).")  # upstream: the trailing "." is any character


def _llava_sqa_extract(pred: str, n_choices: int) -> str | None:
    if pred in _LLAVA_SQA_OPTIONS:
        answer: str | None = pred
    elif len(pred) >= 3 and pred[0] in _LLAVA_SQA_OPTIONS and pred[1:3] == ". ":
        answer = pred[0]
    else:
        found = _LLAVA_ANSWER_IS_RE.findall(pred)
        answer = found[0] if len(found) == 1 else None  # upstream "FAILED"
    return answer if answer in _LLAVA_SQA_OPTIONS[:n_choices] else None


def extract_choice_vlmeval(
    resp: str, choices: Mapping[str, str], version: VlmevalVersion | str = "post1175"
) -> str | None:
    """Rule-based MCQ letter extraction, VLMEvalKit ``can_infer`` family .

    ``choices`` maps letter -> option text. Returns the letter, ``"Z"`` for a recognised refusal (always wrong), or
    ``None`` when nothing can be inferred (upstream then asks an LLM judge, or scores it wrong under exact matching).

    ``version``:
    * ``post1175`` (default, VLMEvalKit HEAD): ``can_infer_option`` (separators ``.()[],:;!*#{}`` -> spaces; one
      letter token, which must be among the last 4 tokens; else a lone ``Z``; else the ``answer is X`` regex of
      PR #1552), then ``can_infer_text`` (unique option-text substring; skipped for answers longer than twice the
      options' total length);
    * ``pre1175``: the same without the position rule, the length rule and the regex;
    * ``lmms_eval_mmbench``: lmms-eval's older copy (whitespace tokens only, prefix/suffix patterns, letters A-E);
    * ``lmms_eval_static``: lmms-eval ``extract_mcq_answer`` (format-priority extractor);
    * ``llava_sqa``: LLaVA ``eval_science_qa.py`` (bare letter, ``"X. ..."``, or one ``The answer is X.``).
    """
    if version == "post1175":
        return _vlmeval_can_infer_option(resp, choices, True) or _vlmeval_can_infer_text(resp, choices, True)
    if version == "pre1175":
        return _vlmeval_can_infer_option(resp, choices, False) or _vlmeval_can_infer_text(resp, choices, False)
    if version == "lmms_eval_mmbench":
        return _lmms_mmbench_can_infer_option(resp) or _vlmeval_can_infer_text(resp, choices, False)
    if version == "lmms_eval_static":
        return _lmms_static_extract(resp, list(choices))
    if version == "llava_sqa":
        return _llava_sqa_extract(resp, len(choices))
    raise ValueError(f"unknown extraction version {version!r}")


ScienceqaMode = Literal["lmms_eval", "llava"]


def scienceqa_match(
    pred: str, gold_letter: str, mode: ScienceqaMode | str = "lmms_eval", n_choices: int = 5
) -> float:
    """ScienceQA-IMG exact match.

    ``lmms_eval`` (default, ``sqa_process_results``): strip; correct if ``pred.lower() == gold.lower()``, or if the
    prediction looks like ``"X."``/``"X. text"`` with upper-case ``X == gold``; anything else (``"(B)"``, ``"B) dog"``,
    ``"The answer is B."``) is 0. ``llava`` (``eval_science_qa.py``): see :func:`extract_choice_vlmeval`
    ``version="llava_sqa"``; ``n_choices`` is the item's number of options.
    """
    if mode == "lmms_eval":
        target = gold_letter.strip().lower()
        pred = pred.strip()
        if pred.lower() == target:
            return 1.0
        if len(pred) >= 2 and pred[0].isupper() and pred[1] == ".":
            return float(pred[0].lower() == target)
        return 0.0
    if mode == "llava":
        return float(_llava_sqa_extract(pred, n_choices) == gold_letter)
    raise ValueError(f"unknown ScienceQA mode {mode!r}")


CircularCopy = tuple[str, str, Mapping[str, str]]  # (prediction, gold letter, choices of this copy)
Extractor = Callable[[str, Mapping[str, str]], str | None]
_CIRCULAR_STRIDE = 1_000_000


def mmbench_groups(records: Sequence[tuple[int, str, str, Mapping[str, str]]]) -> dict[int, list[CircularCopy]]:
    """Group MMBench rows ``(index, prediction, gold, choices)`` into circular groups keyed by ``index % 1e6``.

    Copies of question ``i`` have indices ``i + k * 1e6`` (VLMEvalKit's MMBench files); each group is ordered by index.
    """
    groups: dict[int, list[CircularCopy]] = {}
    for index, pred, gold, choices in sorted(records, key=lambda r: r[0]):
        groups.setdefault(index % _CIRCULAR_STRIDE, []).append((pred, gold, choices))
    return groups


def _extractor(version: str, extract: Extractor | None) -> Extractor:
    if extract is not None:
        return extract
    return lambda pred, choices: extract_choice_vlmeval(pred, choices, version)


def mmbench_circular(
    groups: Mapping[int, Sequence[CircularCopy]],
    version: VlmevalVersion | str = "post1175",
    extract: Extractor | None = None,
) -> float:
    """MMBench circular accuracy: a question is a hit iff **every** copy is answered correctly.

    ``groups`` maps the main question index to its copies ``(prediction, gold letter, choices)``, e.g. from
    :func:`mmbench_groups`. Letters are extracted with :func:`extract_choice_vlmeval` (``version``) or with
    ``extract``; an unextractable copy is wrong. Returns the fraction of hit questions in [0, 1].
    """
    get = _extractor(version, extract)
    if not groups:
        warnings.warn("mmbench_circular: no questions; returning 0.0", stacklevel=2)
        return 0.0
    hits = 0
    for key, copies in groups.items():
        if not copies:
            raise ValueError(f"circular group {key!r} has no copies")
        hits += all(get(pred, choices) == gold for pred, gold, choices in copies)
    return hits / len(groups)


def mmbench_vanilla(
    groups: Mapping[int, Sequence[CircularCopy]],
    version: VlmevalVersion | str = "post1175",
    extract: Extractor | None = None,
    first_copy_only: bool = False,
) -> float:
    """Vanilla (per-copy) MCQ accuracy over the same groups; ``first_copy_only`` scores only the original order.

    :func:`mmbench_circular` never exceeds the first-copy vanilla accuracy (a hit needs every copy right), nor the
    all-copies one when every question has the same number of copies.
    """
    get = _extractor(version, extract)
    rows = [c for copies in groups.values() for c in (copies[:1] if first_copy_only else copies)]
    if not rows:
        warnings.warn("mmbench_vanilla: no rows; returning 0.0", stacklevel=2)
        return 0.0
    return sum(get(pred, choices) == gold for pred, gold, choices in rows) / len(rows)
