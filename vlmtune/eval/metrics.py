"""Evaluation metrics for vision-language benchmarks, as specified in EVAL_SPEC.md §1 (API sketch §6.1).

Pure Python (standard library only). Captioning optionally runs `pycocoevalcap` when it and `java` are present;
otherwise a pure-Python BLEU / ROUGE-L / CIDEr-D that reproduces pycocoevalcap 1.2 is used (METEOR needs Java).

Conventions (EVAL_SPEC.md §0):
* every per-sample metric returns a float in [0, 1] (CIDEr-D is unbounded); scale to percent only when reporting;
* "canonical" is vlmtune's default semantics; `mode=` / `version=` switches reproduce the named harnesses
  ("official", "lmms_eval"/"lmms_vqav2", "vlmevalkit", ...) where they disagree;
* answer extractors return ``None`` for "no parse" and never touch the global ``random`` state: callers that want
  the upstream random fallback pass their own ``random.Random``.

Several upstream quirks are kept on purpose (each is marked "quirk" below): the numbers must match what the
reference harnesses print, otherwise results are not comparable with published ones.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import math
import random
import re
import shutil
import string
import warnings
from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Literal

__all__ = [
    "VQA_PUNCTUATION",
    "VQA_MANUAL_MAP",
    "VQA_ARTICLES",
    "VQA_CONTRACTIONS",
    "normalize_vqa_answer",
    "vqa_accuracy",
    "levenshtein",
    "anls",
    "relaxed_correctness",
    "relaxed_accuracy",
    "gqa_exact_match",
    "extract_choice_mmmu",
    "extract_choice_vlmeval",
    "scienceqa_match",
    "mmbench_groups",
    "mmbench_circular",
    "mmbench_vanilla",
    "mmmu_open_parse",
    "mmmu_open_correct",
    "pope_label",
    "pope_metrics",
    "ptb_tokenize",
    "CAPTION_METRICS",
    "caption_backend_available",
    "caption_scores",
    "caption_scores_detailed",
]

# ---------------------------------------------------------------------------------------------------------------------
# Normalisation tables (EVAL_SPEC.md §1.1 and Appendix A; identical in the official VQA script, mmf/EvalAI, lmms-eval
# and VLMEvalKit). Copied here so the module has no data files.
# ---------------------------------------------------------------------------------------------------------------------

# 21 characters, in upstream order (order matters: each one is handled in turn on the progressively edited copy).
VQA_PUNCTUATION: tuple[str, ...] = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!",
)

# Whole-word number map. Note "none" -> "0" (upstream), and "eleven" is not mapped.
VQA_MANUAL_MAP: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}

VQA_ARTICLES: frozenset[str] = frozenset({"a", "an", "the"})

# The 120-entry map, verbatim. Keys with capitals ("Im", "Ive", ...) can never match after lower-casing and odd
# entries ("somebody'd" -> "somebodyd") are upstream's; both are kept so outputs stay bit-identical.
VQA_CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't",
    "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd", "howll": "how'll",
    "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd",
    "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am",
    "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock",
    "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're", "theres": "there's",
    "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're",
    "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've",
    "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've",
    "whens": "when's", "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd",
    "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've",
    "wouldnt": "wouldn't", "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all",
    "yall'll": "y'all'll", "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}

# quirk: upstream passes re.UNICODE (== 32) as the positional `count` of `periodStrip.sub`, so at most 32 periods
# are deleted per string.
_PERIOD_STRIP_COUNT = int(re.UNICODE)
# quirk: "(?!<=\d)" is a negative look-ahead for the literal text "<=" + digit (a no-op), not a look-behind, so the
# effective rule is "delete every '.' not followed by a digit" ("3." -> "3").
_PERIOD_STRIP_RE = re.compile(r"(?!<=\d)(\.)(?!\d)")
_PERIOD_STRIP_FIXED_RE = re.compile(r"(?<!\d)\.(?!\d)")  # VLMEvalKit's fixed look-behind: "3." stays "3."
_COMMA_MMF_RE = re.compile(r"(?<=\d)(\,)+(?=\d)")  # EvalAI/mmf: also matches runs such as "1,,2"
_COMMA_OFFICIAL_RE = re.compile(r"(\d)(\,)(\d)")  # official VQA script and VLMEvalKit

VqaMode = Literal["canonical", "official", "lmms_vqav2", "vlmevalkit"]
_VQA_MODE_ALIASES = {"evalai": "canonical", "mmf": "canonical", "lmms_textvqa": "canonical"}


def _vqa_mode(mode: str) -> str:
    mode = _VQA_MODE_ALIASES.get(mode, mode)
    if mode not in ("canonical", "official", "lmms_vqav2", "vlmevalkit"):
        raise ValueError(f"unknown VQA normalisation mode {mode!r}")
    return mode


def _process_punctuation(text: str, comma_re: re.Pattern[str], period_re: re.Pattern[str]) -> str:
    """Step 3 of §1.1: every test looks at the *input* `text`, edits go to a copy (upstream behaviour)."""
    out = text
    digit_comma = comma_re.search(text) is not None  # one digit-comma anywhere deletes *all* punctuation
    for p in VQA_PUNCTUATION:
        if (p + " " in text) or (" " + p in text) or digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return period_re.sub("", out, _PERIOD_STRIP_COUNT)


def _process_digit_article(text: str) -> str:
    """Step 4 of §1.1: lower-case, split on any whitespace, map numbers, drop articles, restore contractions."""
    words = [VQA_MANUAL_MAP.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in VQA_ARTICLES]
    return " ".join(VQA_CONTRACTIONS.get(w, w) for w in words)


def _strip_whitespace_controls(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def normalize_vqa_answer(s: str, mode: VqaMode | str = "canonical") -> str:
    """Normalise one VQA answer (EVAL_SPEC.md §1.1).

    ``canonical`` is the EvalAI/mmf ``EvalAIAnswerProcessor`` (LLaVA's TextVQA evaluator; lmms-eval TextVQA, OK-VQA,
    VizWiz): lower-case, delete ``,``/``?``, split ``'s``; then whitespace clean-up, punctuation, digits/articles.
    ``lmms_vqav2`` skips the first step; ``official`` (GT-Vision-Lab ``vqaEval.py``) also skips it and uses the
    ``(\\d)(\\,)(\\d)`` comma test; ``vlmevalkit`` is like ``official`` but with a real period look-behind
    (``"3."`` stays ``"3."``). Not idempotent (32-period cap, ``'s`` split): normalise once.
    """
    mode = _vqa_mode(mode)
    if mode == "canonical":
        s = s.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    s = _strip_whitespace_controls(s)
    if mode in ("canonical", "lmms_vqav2"):
        s = _process_punctuation(s, _COMMA_MMF_RE, _PERIOD_STRIP_RE)
    elif mode == "official":
        s = _process_punctuation(s, _COMMA_OFFICIAL_RE, _PERIOD_STRIP_RE)
    else:
        s = _process_punctuation(s, _COMMA_OFFICIAL_RE, _PERIOD_STRIP_FIXED_RE)
    return _process_digit_article(s)


def vqa_accuracy(pred: str, answers: Sequence[str], mode: VqaMode | str = "canonical") -> float:
    """VQA accuracy of one question (EVAL_SPEC.md §1.1).

    ``mean_i min(1, #{j != i : norm(g_j) == norm(pred)} / 3)`` over the N human answers, leave-one-out **by index**
    (identical answers are distinct annotators). Exact string equality after normalisation, no substring match.
    With ``mode="official"`` normalisation is applied only when the (whitespace-cleaned) answers are not unanimous,
    as in ``vqaEval.py`` (so ``"Yes"`` vs 10 x ``"yes"`` scores 0 there).
    """
    if not answers:
        raise ValueError("vqa_accuracy needs at least one ground-truth answer")
    mode = _vqa_mode(mode)
    if mode == "official":
        gts = [_strip_whitespace_controls(a) for a in answers]
        res = _strip_whitespace_controls(pred)
        if len(set(gts)) > 1:  # quirk: unanimous GT -> raw (stripped) prediction is compared
            gts = [normalize_vqa_answer(g, "official") for g in gts]
            res = normalize_vqa_answer(res, "official")
    else:
        gts = [normalize_vqa_answer(a, mode) for a in answers]
        res = normalize_vqa_answer(pred, mode)
    hits = [g == res for g in gts]
    total = sum(hits)
    return math.fsum(min(1.0, (total - hit) / 3) for hit in hits) / len(hits)


# ---------------------------------------------------------------------------------------------------------------------
# ANLS (§1.2), relaxed accuracy (§1.3), GQA exact match (§1.4)
# ---------------------------------------------------------------------------------------------------------------------


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
    """Average Normalised Levenshtein Similarity of one question (EVAL_SPEC.md §1.2; DocVQA/InfoVQA).

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
    """pix2struct relaxed correctness of one (prediction, target) pair (EVAL_SPEC.md §1.3).

    The relative change is divided by the **target** (argument order matters; VLMEvalKit issue #584 was a swapped
    call). quirk: a target that parses to 0.0 is falsy upstream and falls through to the string comparison.
    """
    pred_f, target_f = _to_float(prediction), _to_float(target)
    if pred_f is not None and target_f:
        return abs(pred_f - target_f) / abs(target_f) <= tol
    return prediction.lower() == target.lower()


def relaxed_accuracy(pred: str, targets: Sequence[str], tol: float = 0.05) -> float:
    """ChartQA relaxed accuracy (EVAL_SPEC.md §1.3): 1.0 if the stripped prediction is within ``tol`` of any target.

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
    """GQA exact match (EVAL_SPEC.md §1.4). No article removal in any mode (``"the table"`` != ``"table"``).

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


# ---------------------------------------------------------------------------------------------------------------------
# Multiple-choice answer extraction (§1.5)
# ---------------------------------------------------------------------------------------------------------------------

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
    """MMMU ``parse_multi_choice_response`` (EVAL_SPEC.md §1.5(b)); ``choices`` maps letter -> option text.

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
    """Rule-based MCQ letter extraction, VLMEvalKit ``can_infer`` family (EVAL_SPEC.md §1.5(c)).

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
    """ScienceQA-IMG exact match (EVAL_SPEC.md §1.5(a)).

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

    Copies of question ``i`` have indices ``i + k * 1e6`` (EVAL_SPEC.md §1.5); each group is ordered by index.
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
    """MMBench circular accuracy (EVAL_SPEC.md §1.5): a question is a hit iff **every** copy is answered correctly.

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


# ---------------------------------------------------------------------------------------------------------------------
# MMMU open-ended questions (§1.5(b), `parse_open_response` / `eval_open`)
# ---------------------------------------------------------------------------------------------------------------------

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
    """MMMU ``parse_open_response`` (EVAL_SPEC.md §1.5(b)): candidate answers (strings and rounded floats).

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


# ---------------------------------------------------------------------------------------------------------------------
# POPE (§1.6)
# ---------------------------------------------------------------------------------------------------------------------

PopeMode = Literal["official", "lmms_eval", "vlmevalkit"]


def pope_label(text: str, mode: PopeMode | str = "official") -> Literal["yes", "no"] | None:
    """Parse a yes/no answer (EVAL_SPEC.md §1.6); ``None`` means unparsed.

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
        words = _process_punctuation(text.lower(), _COMMA_OFFICIAL_RE, _PERIOD_STRIP_FIXED_RE).split()
        has_yes, has_no = "yes" in words, "no" in words
        if has_yes and not has_no:
            return "yes"
        if has_no and not has_yes:
            return "no"
        return None
    raise ValueError(f"unknown POPE mode {mode!r}")


def _ratio(num: float, den: float, name: str) -> float:
    if den == 0:
        # The upstream scripts crash here; vlmtune reports 0 and says so (EVAL_SPEC.md §1.6).
        warnings.warn(f"pope_metrics: {name} has a zero denominator; reporting 0.0", stacklevel=3)
        return 0.0
    return num / den


def pope_metrics(
    preds: Sequence[str], labels: Sequence[str], mode: PopeMode | str = "official"
) -> dict[str, float | int]:
    """POPE accuracy / precision / recall / F1 / yes-ratio over raw model outputs (EVAL_SPEC.md §1.6).

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


# ---------------------------------------------------------------------------------------------------------------------
# Captioning (§1.7): PTB tokenisation, BLEU-1..4, METEOR, ROUGE-L, CIDEr-D as in pycocoevalcap 1.2
# ---------------------------------------------------------------------------------------------------------------------

# Tokens pycocoevalcap's PTBTokenizer wrapper drops. quirk: CoreNLP lower-cases "-LRB-" to "-lrb-" first, so bracket
# tokens survive in the tokenised captions.
_PTB_DROP = frozenset({"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--",
                       "...", ";"})
_PTB_BRACKETS = {"(": "-LRB-", ")": "-RRB-", "[": "-LSB-", "]": "-RSB-", "{": "-LCB-", "}": "-RCB-"}
_PTB_SEPARATORS_RE = re.compile(r"(\.\.\.+|--+|(?<!\d)[,:]|[,:](?!\d))")  # "1,000" and "3:45" stay whole
_PTB_ABBREVIATIONS = frozenset({
    "mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "etc", "inc", "ft", "co", "corp", "ltd", "prof", "mt",
    "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec",
})
_PTB_ACRONYM_RE = re.compile(r"^(?:[A-Za-z]\.|(?:[A-Za-z]+\.){2,})$")  # "a.", "u.s.a.", "e.g.", "ph.d."
_PTB_APOSTROPHE_WORDS = frozenset({"'s", "'em", "'cause", "'tis", "'twas", "'n'", "'ll", "'re", "'ve", "'d", "'m"})
_PTB_SPLIT_WORDS = {
    "cannot": ("can", "not"), "gonna": ("gon", "na"), "gotta": ("got", "ta"), "wanna": ("wan", "na"),
    "lemme": ("lem", "me"), "gimme": ("gim", "me"),
}
_PTB_CLITIC_RE = re.compile(r"(?i)^(.+?)(n't|'s|'m|'re|'ve|'ll|'d)$")
_PTB_CURRENCY = {"$": "$", "#": "#", "£": "#", "€": "$", "¥": "$"}  # CoreNLP normalizeCurrency


def _ptb_core(word: str) -> list[str]:
    """Split contractions and a few fused words the way CoreNLP's PTB lexer does."""
    fused = _PTB_SPLIT_WORDS.get(word.lower())
    if fused:
        return [word[: len(fused[0])], word[len(fused[0]) :]]
    if len(word) > 2 and word[:2].lower() == "y'":
        return [word[:2], word[2:]]
    match = _PTB_CLITIC_RE.match(word)
    return [match.group(1), match.group(2)] if match else [word]


def _ptb_piece(piece: str) -> list[str]:
    lead: list[str] = []
    trail: list[str] = []
    while piece:
        if piece.startswith("``"):
            lead.append("``")
            piece = piece[2:]
        elif piece[0] in '"`':
            lead.append("``")
            piece = piece[1:]
        elif piece[0] == "'" and len(piece) > 1 and piece.lower() not in _PTB_APOSTROPHE_WORDS \
                and not piece[1].isdigit():
            lead.append("`")
            piece = piece[1:]
        elif piece[0] in _PTB_CURRENCY and piece[1:2].isdigit():
            lead.append(_PTB_CURRENCY[piece[0]])
            piece = piece[1:]
        else:
            break
    while len(piece) > 1:
        bangs = re.search(r"[!?]+$", piece)
        if piece.endswith("''"):
            trail.insert(0, "''")
            piece = piece[:-2]
        elif piece[-1] in "\"'" and piece.lower() not in _PTB_APOSTROPHE_WORDS:
            trail.insert(0, "''")
            piece = piece[:-1]
        elif bangs and bangs.start() > 0:
            trail.insert(0, bangs.group())
            piece = piece[: bangs.start()]
        elif piece[-1] in ",;:%":
            trail.insert(0, piece[-1])
            piece = piece[:-1]
        elif piece[-1] == "-" and piece[-2].isalnum():
            trail.insert(0, "-")
            piece = piece[:-1]
        elif piece[-1] == "." and piece[:-1].lower() not in _PTB_ABBREVIATIONS and not _PTB_ACRONYM_RE.match(piece):
            trail.insert(0, ".")
            piece = piece[:-1]
        else:
            break
    return lead + (_ptb_core(piece) if piece else []) + trail


def ptb_tokenize(text: str) -> str:
    """Pure-Python approximation of pycocoevalcap's ``PTBTokenizer`` (CoreNLP 3.4.1 ``-preserveLines -lowerCase``
    followed by dropping punctuation tokens), used only when Java is unavailable.

    It reproduces the Java tokenizer on ordinary captions (lower-casing, punctuation removal, ``'s``/``n't``
    splitting, ``$``/``%`` splitting, brackets -> ``-lrb-``...), but not every corner of CoreNLP's lexer (emoticons,
    some abbreviations); scores computed from it are flagged with a warning by :func:`caption_scores`.
    """
    tokens: list[str] = []
    for chunk in text.replace("\n", " ").split():
        for part in re.split(r"([()\[\]{}])", chunk):
            if part in _PTB_BRACKETS:
                tokens.append(_PTB_BRACKETS[part])
                continue
            for piece in _PTB_SEPARATORS_RE.split(part):
                if not piece:
                    continue
                tokens.extend([piece] if _PTB_SEPARATORS_RE.fullmatch(piece) else _ptb_piece(piece))
    lowered = (t.lower() for t in tokens)
    return " ".join(t for t in lowered if t and t not in _PTB_DROP)


def _ngram_counts(words: Sequence[str], n: int = 4) -> Counter[tuple[str, ...]]:
    """n-gram counts for sizes 1..n, in pycocoevalcap ``precook`` insertion order."""
    counts: Counter[tuple[str, ...]] = Counter()
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            counts[tuple(words[i : i + k])] += 1
    return counts


def _bleu(hyps: Sequence[str], refs: Sequence[Sequence[str]], n: int = 4) -> tuple[list[float], list[list[float]]]:
    """pycocoevalcap ``Bleu(4)`` with ``option='closest'``: (corpus BLEU_1..n, per-image sentence BLEU_1..n)."""
    total_correct, total_guess = [0] * n, [0] * n
    total_test = total_ref = 0
    per_image: list[list[float]] = []
    for hyp, image_refs in zip(hyps, refs, strict=True):
        ref_lens: list[int] = []
        max_counts: dict[tuple[str, ...], int] = {}
        for ref in image_refs:
            words = ref.split()
            ref_lens.append(len(words))
            for gram, count in _ngram_counts(words, n).items():
                max_counts[gram] = max(max_counts.get(gram, 0), count)
        words = hyp.split()
        test_len = len(words)
        ref_len = min((abs(length - test_len), length) for length in ref_lens)[1]  # closest; ties -> shorter
        guess = [max(0, test_len - k) for k in range(n)]
        correct = [0] * n
        for gram, count in _ngram_counts(words, n).items():
            correct[len(gram) - 1] += min(max_counts.get(gram, 0), count)
        per_image.append(_bleu_from_stats(correct, guess, test_len, ref_len))
        total_test += test_len
        total_ref += ref_len
        for k in range(n):
            total_correct[k] += correct[k]
            total_guess[k] += guess[k]
    return _bleu_from_stats(total_correct, total_guess, total_test, total_ref), per_image


def _bleu_from_stats(correct: Sequence[int], guess: Sequence[int], test_len: int, ref_len: int) -> list[float]:
    tiny, small = 1e-15, 1e-9  # upstream smoothing: a perfect match scores 0.99999999995, not 1.0
    scores = []
    bleu = 1.0
    for k in range(len(correct)):
        bleu *= (correct[k] + tiny) / (guess[k] + small)
        scores.append(bleu ** (1.0 / (k + 1)))
    ratio = (test_len + tiny) / (ref_len + small)
    if ratio < 1:  # brevity penalty
        scores = [s * math.exp(1 - 1 / ratio) for s in scores]
    return scores


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def _rouge_l(hyp: str, refs: Sequence[str], beta: float = 1.2) -> float:
    """pycocoevalcap ``Rouge``: tokens = ``split(" ")``; precision and recall maxima are taken independently."""
    hyp_tokens = hyp.split(" ")
    precisions, recalls = [], []
    for ref in refs:
        ref_tokens = ref.split(" ")
        lcs = _lcs(ref_tokens, hyp_tokens)
        precisions.append(lcs / len(hyp_tokens))
        recalls.append(lcs / len(ref_tokens))
    p, r = max(precisions), max(recalls)
    if p == 0 or r == 0:
        return 0.0
    return ((1 + beta**2) * p * r) / (r + beta**2 * p)


def _cider_d(hyps: Sequence[str], refs: Sequence[Sequence[str]], n: int = 4, sigma: float = 6.0) -> list[float]:
    """pycocoevalcap ``Cider`` (= CIDEr-D): per-image scores; IDF from the references of this corpus only."""
    hyp_counts = [_ngram_counts(h.split(), n) for h in hyps]
    ref_counts = [[_ngram_counts(r.split(), n) for r in image_refs] for image_refs in refs]
    doc_freq: Counter[tuple[str, ...]] = Counter()
    for image_refs in ref_counts:
        doc_freq.update({gram for counts in image_refs for gram in counts})
    log_n_images = math.log(float(len(ref_counts)))  # log 1 == 0: a single image always scores 0

    def to_vec(counts: Counter[tuple[str, ...]]) -> tuple[list[dict[tuple[str, ...], float]], list[float], int]:
        vec: list[dict[tuple[str, ...], float]] = [{} for _ in range(n)]
        norm = [0.0] * n
        length = 0
        for gram, tf in counts.items():
            k = len(gram) - 1
            value = float(tf) * (log_n_images - math.log(max(1.0, doc_freq[gram])))
            vec[k][gram] = value
            norm[k] += value**2
            if k == 1:  # the length penalty counts bigrams (= words - 1)
                length += tf
        return vec, [math.sqrt(x) for x in norm], length

    scores = []
    for hyp, image_refs in zip(hyp_counts, ref_counts, strict=True):
        vec_h, norm_h, len_h = to_vec(hyp)
        total = [0.0] * n
        for ref in image_refs:
            vec_r, norm_r, len_r = to_vec(ref)
            penalty = math.e ** (-((len_h - len_r) ** 2) / (2 * sigma**2))
            for k in range(n):
                val = sum(min(v, vec_r[k].get(g, 0.0)) * vec_r[k].get(g, 0.0) for g, v in vec_h[k].items())
                if norm_h[k] != 0 and norm_r[k] != 0:
                    val /= norm_h[k] * norm_r[k]
                total[k] += val * penalty
        scores.append(sum(total) / n / len(image_refs) * 10.0)
    return scores


CaptionMetric = Literal["Bleu", "METEOR", "ROUGE_L", "CIDEr"]
CAPTION_METRICS: tuple[str, ...] = ("Bleu", "METEOR", "ROUGE_L", "CIDEr")


def caption_backend_available() -> bool:
    """True when pycocoevalcap is importable and ``java`` is on PATH (PTBTokenizer and METEOR need both)."""
    return shutil.which("java") is not None and importlib.util.find_spec("pycocoevalcap") is not None


def _java_ptb(captions: Mapping[Hashable, Sequence[str]]) -> dict[Hashable, list[str]]:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    out = PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions.items()})
    result = {}
    for k, v in captions.items():
        tokenized = list(out.get(k, []))
        # Trailing empty captions can be lost by the Java tokenizer; they tokenise to "".
        result[k] = tokenized + [""] * (len(v) - len(tokenized))
    return result


def caption_scores_detailed(
    preds: Mapping[Hashable, str],
    refs: Mapping[Hashable, Sequence[str]],
    metrics: Sequence[CaptionMetric | str] = CAPTION_METRICS,
    tokenize: Literal["ptb", "ptb_python", "none"] | str = "ptb",
    backend: Literal["auto", "pycocoevalcap", "python"] | str = "auto",
) -> tuple[dict[str, float], dict[Hashable, dict[str, float]]]:
    """Corpus caption scores plus per-image scores; see :func:`caption_scores`.

    Per-image BLEU is sentence-level BLEU (upstream's second return value); it is **not** averaged into the corpus
    BLEU. Per-image CIDEr-D still depends on the whole corpus through the IDF.
    """
    unknown = [m for m in metrics if m not in CAPTION_METRICS]
    if unknown:
        raise ValueError(f"unknown caption metrics {unknown}; choose from {CAPTION_METRICS}")
    if set(preds) != set(refs):
        raise ValueError("preds and refs must have the same image ids")
    if not preds:
        raise ValueError("caption_scores needs at least one image")
    if any(len(r) == 0 for r in refs.values()):
        raise ValueError("every image needs at least one reference caption")
    if backend not in ("auto", "pycocoevalcap", "python"):
        raise ValueError(f"unknown caption backend {backend!r}")
    available = caption_backend_available()
    if backend == "pycocoevalcap" and not available:
        raise RuntimeError("backend='pycocoevalcap' needs the pycocoevalcap package and a `java` executable")
    use_coco = backend == "pycocoevalcap" or (backend == "auto" and available)

    ids = list(preds)
    hyp_raw = {k: [preds[k]] for k in ids}
    ref_raw = {k: list(refs[k]) for k in ids}
    if tokenize == "ptb" and available:
        hyp_tok, ref_tok = _java_ptb(hyp_raw), _java_ptb(ref_raw)
    elif tokenize in ("ptb", "ptb_python"):
        if tokenize == "ptb":
            warnings.warn("java/pycocoevalcap unavailable: using the pure-Python PTB tokenizer approximation",
                          stacklevel=3)
        hyp_tok = {k: [ptb_tokenize(c) for c in v] for k, v in hyp_raw.items()}
        ref_tok = {k: [ptb_tokenize(c) for c in v] for k, v in ref_raw.items()}
    elif tokenize == "none":  # pre-tokenised input (or VLMEvalKit's no-PTB behaviour)
        hyp_tok, ref_tok = hyp_raw, ref_raw
    else:
        raise ValueError(f"unknown tokenize option {tokenize!r}")

    corpus: dict[str, float] = {}
    per_image: dict[Hashable, dict[str, float]] = {k: {} for k in ids}
    hyps = [hyp_tok[k][0] for k in ids]
    references = [ref_tok[k] for k in ids]
    for metric in CAPTION_METRICS:
        if metric not in metrics:
            continue
        if metric == "METEOR" and not available:
            warnings.warn("METEOR needs java and pycocoevalcap; it is left out", stacklevel=3)
            continue
        if use_coco or metric == "METEOR":
            score, image_scores = _coco_score(metric, hyp_tok, ref_tok)
        elif metric == "Bleu":
            score, image_scores = _bleu(hyps, references)
        elif metric == "ROUGE_L":
            image_scores = [_rouge_l(h, r) for h, r in zip(hyps, references, strict=True)]
            score = math.fsum(image_scores) / len(image_scores)
        else:
            image_scores = _cider_d(hyps, references)
            score = math.fsum(image_scores) / len(image_scores)
        if metric == "Bleu":
            for k in range(4):
                corpus[f"Bleu_{k + 1}"] = float(score[k])
                for i, image_id in enumerate(ids):
                    per_image[image_id][f"Bleu_{k + 1}"] = float(image_scores[i][k])
        else:
            corpus[metric] = float(score)
            for i, image_id in enumerate(ids):
                per_image[image_id][metric] = float(image_scores[i])
    return corpus, per_image


def _coco_score(
    metric: str, hyp_tok: dict[Hashable, list[str]], ref_tok: dict[Hashable, list[str]]
) -> tuple[float | list[float], list[float] | list[list[float]]]:
    """Run one pycocoevalcap scorer; BLEU scores come back transposed to per-image lists."""
    if metric == "Bleu":
        from pycocoevalcap.bleu.bleu import Bleu

        with contextlib.redirect_stdout(io.StringIO()):  # Bleu prints its length statistics
            score, scores = Bleu(4).compute_score(ref_tok, hyp_tok)
        return score, [list(image) for image in zip(*scores, strict=True)]
    if metric == "METEOR":
        from pycocoevalcap.meteor.meteor import Meteor

        meteor = Meteor()
        try:
            score, scores = meteor.compute_score(ref_tok, hyp_tok)
        finally:
            # Upstream only kills the jar in __del__ and never closes its pipes (ResourceWarnings); close them here.
            process = meteor.meteor_p
            process.kill()
            process.wait()
            for pipe in (process.stdin, process.stdout, process.stderr):
                if pipe is not None:
                    pipe.close()
        return score, list(scores)
    if metric == "ROUGE_L":
        from pycocoevalcap.rouge.rouge import Rouge

        score, scores = Rouge().compute_score(ref_tok, hyp_tok)
        return score, list(scores)
    from pycocoevalcap.cider.cider import Cider

    score, scores = Cider().compute_score(ref_tok, hyp_tok)
    return score, list(scores)


def caption_scores(
    preds: Mapping[Hashable, str],
    refs: Mapping[Hashable, Sequence[str]],
    metrics: Sequence[CaptionMetric | str] = CAPTION_METRICS,
    tokenize: Literal["ptb", "ptb_python", "none"] | str = "ptb",
    backend: Literal["auto", "pycocoevalcap", "python"] | str = "auto",
) -> dict[str, float]:
    """COCO caption metrics over a whole corpus (EVAL_SPEC.md §1.7): ``Bleu_1..4``, ``METEOR``, ``ROUGE_L``, ``CIDEr``.

    ``preds`` maps image id -> one prediction, ``refs`` image id -> reference captions. Compute **once, on the
    gathered corpus**: CIDEr-D's IDF depends on every image evaluated together (a single image always scores 0), so
    per-shard scores must never be averaged.

    * ``tokenize="ptb"`` (COCO/lmms-eval pipeline): Java PTBTokenizer via pycocoevalcap when available, else the
      pure-Python :func:`ptb_tokenize` approximation (with a warning); ``"ptb_python"`` forces the latter; ``"none"``
      uses the strings as given (pre-tokenised input; on raw text this is VLMEvalKit's non-comparable variant).
    * ``backend="auto"`` uses pycocoevalcap's scorers when it and ``java`` are present, else the pure-Python BLEU /
      ROUGE-L / CIDEr-D (same numbers). METEOR only exists in the Java jar: without it, it is left out with a warning.
    """
    return caption_scores_detailed(preds, refs, metrics, tokenize, backend)[0]
