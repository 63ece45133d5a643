"""Evaluation metrics for vision-language benchmarks, one module per family, each citing the code it follows.

vqa.py (VQA accuracy and answer normalisation), answer_match.py (ANLS, relaxed accuracy, GQA exact match), choice.py
(multiple-choice letters, MMBench circular accuracy, ScienceQA), mmmu.py (MMMU's parsers), pope.py (POPE),
caption.py with ptb.py (COCO caption metrics).

Pure Python (standard library only). Captioning optionally runs `pycocoevalcap` when it and `java` are present.

Conventions:
* every per-sample metric returns a float in [0, 1] (CIDEr-D is unbounded); scale to percent only when reporting;
* "canonical" is vlmtune's default semantics; `mode=` / `version=` switches reproduce the named harnesses
  ("official", "lmms_eval"/"lmms_vqav2", "vlmevalkit", ...) where they disagree;
* answer extractors return ``None`` for "no parse" and never touch the global ``random`` state: callers that want
  the upstream random fallback pass their own ``random.Random``.

Several upstream quirks are kept on purpose (each is marked "quirk"): the numbers must match what the reference
harnesses print, otherwise results are not comparable with published ones.
"""

from vlmtune.eval.metrics.answer_match import anls, gqa_exact_match, levenshtein, relaxed_accuracy, relaxed_correctness
from vlmtune.eval.metrics.caption import (
    CAPTION_METRICS,
    caption_backend_available,
    caption_scores,
    caption_scores_detailed,
)
from vlmtune.eval.metrics.choice import (
    extract_choice_vlmeval,
    mmbench_circular,
    mmbench_groups,
    mmbench_vanilla,
    scienceqa_match,
)
from vlmtune.eval.metrics.mmmu import extract_choice_mmmu, mmmu_open_correct, mmmu_open_parse
from vlmtune.eval.metrics.pope import pope_label, pope_metrics
from vlmtune.eval.metrics.ptb import ptb_tokenize
from vlmtune.eval.metrics.vqa import (
    VQA_ARTICLES,
    VQA_CONTRACTIONS,
    VQA_MANUAL_MAP,
    VQA_PUNCTUATION,
    normalize_vqa_answer,
    vqa_accuracy,
)

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
