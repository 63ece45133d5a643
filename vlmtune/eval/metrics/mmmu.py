"""MMMU's answer parsing: multiple-choice letters and open-ended answers.

Follows MMMU-Benchmark/MMMU `mmmu/utils/eval_utils.py` (`parse_multi_choice_response`, `parse_open_response`,
`normalize_str`, `extract_numbers`, `eval_open`); ``mode="lmms_eval"`` follows EvolvingLMMs-Lab/lmms-eval
`lmms_eval/tasks/mmmu/utils.py`, where the multiple-choice parser differs.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from typing import Literal

RngLike = random.Random | int | None


def _as_rng(rng: RngLike) -> random.Random | None:
    return random.Random(rng) if isinstance(rng, int) else rng


MmmuMode = Literal["official", "lmms_eval"]
_MMMU_EDGE_CHARS = (",", ".", "!", "?", ";", ":", "'")


def extract_choice_mmmu(
    resp: str,
    choices: Mapping[str, str],
    mode: MmmuMode | str = "official",
    rng: RngLike = None,
) -> str | None:
    """MMMU ``parse_multi_choice_response``; ``choices`` maps letter -> option text.

    Stages: ``(c)``; ``" c "`` (``mode="lmms_eval"``: ``"c "`` without the leading space, then an extra ``"c."``
    pass); option text as a substring when the response has more than 5 words; several candidates -> the last
    mention wins (``rfind``; ties -> first). When nothing parses, upstream calls ``random.choice``: here that
    happens only with an explicit ``rng`` (a ``random.Random`` or an int seed; ``random.Random(42)`` replays the
    official module's ``random.seed(42)`` stream when shared across calls in the same order); the default returns
    ``None`` so the caller decides (score 0 and count it).
    """
    if mode not in ("official", "lmms_eval"):
        raise ValueError(f"unknown MMMU mode {mode!r}")
    lmms = mode == "lmms_eval"
    all_choices = list(choices)
    for ch in _MMMU_EDGE_CHARS:  # sequential strips, ends only
        resp = resp.strip(ch)
    resp = f" {resp} "

    index_ans, with_brackets = True, False
    candidates = [c for c in all_choices if f"({c})" in resp]
    if candidates:
        with_brackets = True
    else:
        # quirk (lmms-eval): "c " without the leading space matches inside words, e.g. " DNA " -> "A".
        candidates = [c for c in all_choices if (f"{c} " if lmms else f" {c} ") in resp]
    if not candidates and lmms:
        candidates = [c for c in all_choices if f"{c}." in resp]
    if not candidates and len(resp.split()) > 5:
        lowered = resp.lower()
        candidates = [c for c, text in choices.items() if text.lower() in lowered]
        index_ans = False

    if not candidates:
        generator = _as_rng(rng)
        return generator.choice(all_choices) if generator is not None and all_choices else None
    if len(candidates) == 1:
        return candidates[0]
    if index_ans:
        # quirk (lmms-eval): candidates from the "c." pass are still ranked by " c " (all -1 -> the first wins).
        positions = [resp.rfind(f"({c})" if with_brackets else f" {c} ") for c in candidates]
    else:
        positions = [resp.lower().rfind(choices[c].lower()) for c in candidates]
    return candidates[max(range(len(candidates)), key=positions.__getitem__)]  # np.argmax: first maximum


_MMMU_KEY_INDICATORS = ("could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ")
_MMMU_TRIVIAL_TAILS = (":", ",", ".", "!", "?", ";", "'")
# quirk: the response is lower-cased before this split, so the capital look-ahead never fires (only "\n" splits).
_MMMU_SENTENCE_SPLIT_RE = re.compile(r"\.\s(?=[A-Z])|\n")
_MMMU_NUMBER_RES = (
    re.compile(r"-?\b\d{1,3}(?:,\d{3})+\b"),  # comma-grouped
    re.compile(r"-?\d+(?:\.\d+)?[eE][+-]?\d+"),  # scientific
    re.compile(r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])"),  # simple
)


def _mmmu_normalize(text: str) -> list[str | float]:
    """``normalize_str``: numbers -> ``round(float, 2)``; text -> lower-case, 1-char strings padded both ways."""
    text = text.strip()
    try:
        return [round(float(text.replace(",", "")), 2)]
    except ValueError:
        pass
    text = text.lower()
    return [" " + text, text + " "] if len(text) == 1 else [text]


def _mmmu_key_subresponses(response: str) -> list[str]:
    response = response.strip().strip(".").lower()
    sub_responses = _MMMU_SENTENCE_SPLIT_RE.split(response)
    indicators = list(_MMMU_KEY_INDICATORS)
    keys = []
    for index, resp in enumerate(sub_responses):
        if index == len(sub_responses) - 1:
            indicators.append("=")  # the last sentence may be an equation
        shortest: str | None = None
        for indicator in indicators:
            if indicator in resp:
                tail = resp.split(indicator)[-1].strip()
                # quirk: upstream tests `not shortest`, so an empty tail is replaced by the next (longer) one.
                if not shortest or len(tail) < len(shortest):
                    shortest = tail
        if shortest and shortest.strip() not in _MMMU_TRIVIAL_TAILS:
            keys.append(shortest)
    return keys or [response]


def mmmu_open_parse(resp: str) -> list[str | float]:
    """MMMU ``parse_open_response``: candidate answers (strings and rounded floats).

    Takes the shortest tail after an indicator (``is``, ``so``, ``therefore``, ..., ``=`` in the last sentence), adds
    every number found by the three upstream regexes, normalises, removes duplicates (first occurrence kept; upstream
    returns an unordered set).
    """
    keys = _mmmu_key_subresponses(resp)
    candidates = list(keys)
    for key in keys:
        for pattern in _MMMU_NUMBER_RES:
            candidates.extend(pattern.findall(key))
    normalised = [value for candidate in candidates for value in _mmmu_normalize(candidate)]
    return list(dict.fromkeys(normalised))


def mmmu_open_correct(gold: str | Sequence[str], parsed: Sequence[str | float]) -> bool:
    """MMMU ``eval_open``: a normalised gold string is a substring of a string candidate, or equals a number.

    Known false positive kept for parity: ``"so the result is 7, not 8"`` is correct for gold ``8``.
    """
    golds = [gold] if isinstance(gold, str) else list(gold)
    norm_answers = [value for g in golds for value in _mmmu_normalize(g)]
    for pred in parsed:
        if isinstance(pred, str):
            if any(isinstance(a, str) and a in pred for a in norm_answers):
                return True
        elif pred in norm_answers:
            return True
    return False
