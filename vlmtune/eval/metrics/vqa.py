"""VQA answer normalisation and VQA accuracy (VQAv2, TextVQA, OK-VQA, VizWiz).

Follows, per `mode`:
* ``official``: GT-Vision-Lab/VQA `PythonEvaluationTools/vqaEvaluation/vqaEval.py` (`VQAEval.evaluate`,
  `processPunctuation`, `processDigitArticle`);
* ``canonical`` (the default): the EvalAI answer processor, facebookresearch/mmf `mmf/utils/m4c_evaluators.py`
  (`EvalAIAnswerProcessor`), copied as haotian-liu/LLaVA `llava/eval/m4c_evaluator.py` and EvolvingLMMs-Lab/lmms-eval
  `lmms_eval/tasks/_task_utils/vqa_eval_metric.py` (lmms-eval's TextVQA, OK-VQA, VizWiz);
* ``lmms_vqav2``: lmms-eval `lmms_eval/tasks/vqav2/utils.py` (`vqav2_process_results`: the processor's punctuation
  and digit/article steps only);
* ``vlmevalkit``: open-compass/VLMEvalKit `vlmeval/dataset/utils/vqa_eval.py` (`process_answer`) with
  `vlmeval/smp/misc.py` (`process_punctuation`).

Normalisation runs four steps: (1, ``canonical`` only) lower-case, delete ``,`` and ``?``, split ``'s``; (2) turn
newlines and tabs into spaces and strip; (3) punctuation; (4) lower-case, map number words, drop articles, restore
contractions. The tables below are identical in all of them (copied, so the module has no data files).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Literal

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
    """Step 3: every test looks at the *input* `text`, edits go to a copy (upstream behaviour)."""
    out = text
    digit_comma = comma_re.search(text) is not None  # one digit-comma anywhere deletes *all* punctuation
    for p in VQA_PUNCTUATION:
        if (p + " " in text) or (" " + p in text) or digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return period_re.sub("", out, _PERIOD_STRIP_COUNT)


def process_punctuation(text: str, mode: VqaMode | str = "canonical") -> str:
    """Step 3 alone, with `mode`'s digit-comma test and period rule (VLMEvalKit's yes/no parser uses it too)."""
    mode = _vqa_mode(mode)
    comma_re = _COMMA_MMF_RE if mode in ("canonical", "lmms_vqav2") else _COMMA_OFFICIAL_RE
    period_re = _PERIOD_STRIP_FIXED_RE if mode == "vlmevalkit" else _PERIOD_STRIP_RE
    return _process_punctuation(text, comma_re, period_re)


def _process_digit_article(text: str) -> str:
    """Step 4: lower-case, split on any whitespace, map numbers, drop articles, restore contractions."""
    words = [VQA_MANUAL_MAP.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in VQA_ARTICLES]
    return " ".join(VQA_CONTRACTIONS.get(w, w) for w in words)


def _strip_whitespace_controls(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def normalize_vqa_answer(s: str, mode: VqaMode | str = "canonical") -> str:
    """Normalise one VQA answer.

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
    return _process_digit_article(process_punctuation(s, mode))


def vqa_accuracy(pred: str, answers: Sequence[str], mode: VqaMode | str = "canonical") -> float:
    """VQA accuracy of one question.

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
