"""COCO caption metrics: BLEU-1..4, METEOR, ROUGE-L and CIDEr-D over a corpus, as pycocoevalcap 1.2 computes them.

With `pycocoevalcap` and `java` present its own scorers run (the pipeline of EvolvingLMMs-Lab/lmms-eval
`lmms_eval/tasks/coco_cap/utils.py`); otherwise pure-Python ports of salaniz/pycocoevalcap `bleu/bleu_scorer.py`
(`option="closest"`), `rouge/rouge.py` and `cider/cider_scorer.py` give the same numbers, and METEOR (only in the
`meteor/meteor.py` jar) is left out with a warning.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import math
import shutil
import warnings
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from typing import Literal

from vlmtune.eval.metrics.ptb import ptb_tokenize


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
    """COCO caption metrics over a whole corpus: ``Bleu_1..4``, ``METEOR``, ``ROUGE_L``, ``CIDEr``.

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
