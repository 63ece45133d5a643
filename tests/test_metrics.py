"""Tests for `vlmtune.eval.metrics`: the reference vectors of EVAL_SPEC.md (metric_vectors.json) and the metric
property tests of its §6.2.

The vectors sit in the shared folder beside the repository root (in CI too); every entry of every group is checked,
for the canonical value and for each harness variant (`expected_by_impl`) the module implements.
"""

from __future__ import annotations

import importlib.util
import json
import math
import random
import shutil
import warnings
from pathlib import Path
from typing import Any

import pytest

from vlmtune.eval import metrics as M
from vlmtune.eval.metrics import caption

VECTORS_PATH = Path(__file__).resolve().parents[2] / "shared" / "eval" / "metric_vectors.json"
VECTORS: dict[str, Any] = json.loads(VECTORS_PATH.read_text()) if VECTORS_PATH.is_file() else {}
TOL = 1e-9  # _meta.float_tolerance
METEOR_TOL = 1e-6

# Caption vectors that run the Java tools (PTBTokenizer on raw captions, METEOR) are skipped only without them.
requires_java = pytest.mark.skipif(
    shutil.which("java") is None or importlib.util.find_spec("pycocoevalcap") is None,
    reason="needs `java` and the pycocoevalcap package (PTBTokenizer and METEOR jars)",
)

# expected_by_impl key -> the mode/version switch that reproduces it.
VQA_IMPLS = {
    "official_vqaEval": "official",
    "lmms_eval_vqav2": "lmms_vqav2",
    "lmms_eval_textvqa_okvqa_vizwiz__llava_m4c": "canonical",
    "vlmevalkit": "vlmevalkit",
}
NORMALIZATION_IMPLS = {
    "evalai_processor_full(word_tokenize+punct+digit_article)": "canonical",
    "official_punct_then_digit_article": "official",
    "vlmevalkit_process_answer": "vlmevalkit",
}
MMMU_IMPLS = {"official_mmmu": "official", "lmms_eval_mmmu": "lmms_eval"}
VLMEVAL_IMPLS = {
    "vlmevalkit_can_infer_post_pr1175": "post1175",
    "vlmevalkit_can_infer_pre_pr1175": "pre1175",
    "lmms_eval_mmbench_can_infer": "lmms_eval_mmbench",
    "lmms_eval_extract_mcq_answer": "lmms_eval_static",
    "llava_eval_science_qa": "llava_sqa",
}
POPE_IMPLS = {"official_pope_llava": "official", "lmms_eval": "lmms_eval", "vlmevalkit": "vlmevalkit"}
GQA_IMPLS = {"lmms_eval_exact_match": "lmms_eval", "llava_gqa_script": "llava", "vlmevalkit_accuracy": "vlmevalkit"}
RELAXED_IMPLS = ("lmms_eval_metric_fn", "vlmevalkit")  # same semantics: any/max over the targets

KNOWN_GROUPS = {
    "vqa_accuracy", "vqa_answer_normalization", "anls", "relaxed_accuracy", "mc_extraction_mmmu",
    "mc_extraction_vlmevalkit", "scienceqa_lmms_eval_exact_match", "mmbench_circular", "mmmu_open_ended",
    "pope_answer_parsing", "pope_aggregate", "gqa_exact_match", "coco_caption",
}


def _entry_id(group: str, index: int, entry: dict[str, Any]) -> str:
    return f"{group}[{index}:{entry.get('id', '')}]"


def cases(group: str) -> list[Any]:
    """One pytest param per vector entry of `group`."""
    return [pytest.param(e, id=_entry_id(group, i, e)) for i, e in enumerate(VECTORS.get(group, []))]


def impl_cases(group: str, impls: dict[str, str]) -> list[Any]:
    """One param per (entry, implemented variant): the canonical `expected` plus each `expected_by_impl` value."""
    params = []
    for i, e in enumerate(VECTORS.get(group, [])):
        params.append(pytest.param(e, None, e["expected"], id=_entry_id(group, i, e) + "-canonical"))
        for impl, value in e.get("expected_by_impl", {}).items():
            params.append(pytest.param(e, impls[impl], value, id=f"{_entry_id(group, i, e)}-{impl}"))
    return params


def test_vector_file_present_and_fully_covered() -> None:
    assert VECTORS_PATH.is_file(), (
        f"metric test vectors not found at {VECTORS_PATH}: the shared/ folder must sit beside the repository root"
    )
    groups = set(VECTORS) - {"_meta"}
    assert groups <= KNOWN_GROUPS, f"vector groups without a test: {sorted(groups - KNOWN_GROUPS)}"
    assert all(VECTORS[g] for g in groups)


def test_tables_match_meta() -> None:
    tables = VECTORS["_meta"]["vqa_tables"]
    assert list(M.VQA_PUNCTUATION) == tables["punctuation"]
    assert M.VQA_MANUAL_MAP == tables["manual_map"]
    assert sorted(M.VQA_ARTICLES) == sorted(tables["articles"])
    assert M.VQA_CONTRACTIONS == tables["contractions"] and len(M.VQA_CONTRACTIONS) == 120


# ------------------------------------------------------------------------------------------------------------------
# Vector tests, one group at a time
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("entry", "mode", "expected"), impl_cases("vqa_accuracy", VQA_IMPLS))
def test_vqa_accuracy_vectors(entry: dict, mode: str | None, expected: float) -> None:
    got = M.vqa_accuracy(entry["prediction"], entry["references"], **({"mode": mode} if mode else {}))
    assert got == pytest.approx(expected, abs=TOL)


@pytest.mark.parametrize(("entry", "mode", "expected"), impl_cases("vqa_answer_normalization", NORMALIZATION_IMPLS))
def test_vqa_normalization_vectors(entry: dict, mode: str | None, expected: str) -> None:
    assert M.normalize_vqa_answer(entry["prediction"], **({"mode": mode} if mode else {})) == expected


@pytest.mark.parametrize("entry", cases("anls"))
def test_anls_vectors(entry: dict) -> None:
    assert M.anls(entry["prediction"], entry["references"]) == pytest.approx(entry["expected"], abs=TOL)


@pytest.mark.parametrize("entry", cases("relaxed_accuracy"))
def test_relaxed_accuracy_vectors(entry: dict) -> None:
    got = M.relaxed_accuracy(entry["prediction"], entry["references"])
    assert got == pytest.approx(entry["expected"], abs=TOL)
    for impl, value in entry.get("expected_by_impl", {}).items():
        assert impl in RELAXED_IMPLS
        assert got == pytest.approx(value, abs=TOL)


@pytest.mark.parametrize(("entry", "mode", "expected"), impl_cases("mc_extraction_mmmu", MMMU_IMPLS))
def test_mmmu_choice_vectors(entry: dict, mode: str | None, expected: str) -> None:
    kwargs = {"mode": mode} if mode else {}
    choices = entry["references"]
    if expected != "RANDOM_FALLBACK":
        assert M.extract_choice_mmmu(entry["prediction"], choices, **kwargs) == expected
        return
    # No parse: None by default; the upstream random fallback only through an explicit, seeded generator.
    assert M.extract_choice_mmmu(entry["prediction"], choices, **kwargs) is None
    drawn = M.extract_choice_mmmu(entry["prediction"], choices, rng=random.Random(42), **kwargs)
    assert drawn == random.Random(42).choice(list(choices))
    seeded = M.extract_choice_mmmu(entry["prediction"], choices, rng=7, **kwargs)
    assert seeded == random.Random(7).choice(list(choices))


@pytest.mark.parametrize(("entry", "version", "expected"), impl_cases("mc_extraction_vlmevalkit", VLMEVAL_IMPLS))
def test_vlmeval_choice_vectors(entry: dict, version: str | None, expected: str | None) -> None:
    kwargs = {"version": version} if version else {}
    expected = None if expected == "FAILED" else expected
    assert M.extract_choice_vlmeval(entry["prediction"], entry["references"], **kwargs) == expected
    if version == "llava_sqa" and expected is not None:
        assert M.scienceqa_match(entry["prediction"], expected, mode="llava", n_choices=len(entry["references"])) == 1


@pytest.mark.parametrize("entry", cases("scienceqa_lmms_eval_exact_match"))
def test_scienceqa_vectors(entry: dict) -> None:
    assert M.scienceqa_match(entry["prediction"], entry["references"][0]) == entry["expected"]
    assert M.scienceqa_match(entry["prediction"], entry["references"][0], mode="lmms_eval") == entry["expected"]


@pytest.mark.parametrize("entry", cases("mmbench_circular"))
def test_mmbench_circular_vectors(entry: dict) -> None:
    copies = list(zip(entry["prediction"], entry["references"], entry["choices_per_copy"], strict=True))
    groups = {0: copies}
    assert M.mmbench_circular(groups) == pytest.approx(entry["expected"], abs=TOL)
    assert M.mmbench_vanilla(groups) == pytest.approx(entry["vanilla_accuracy_all_copies"], abs=TOL)
    assert M.mmbench_vanilla(groups, first_copy_only=True) == pytest.approx(entry["vanilla_accuracy_copy0"], abs=TOL)
    # The same question given as raw rows with indices i + k * 1e6, in shuffled order.
    records = [(17 + k * 1_000_000, *copy) for k, copy in enumerate(copies)]
    random.Random(0).shuffle(records)
    assert M.mmbench_groups(records) == {17: copies}


@pytest.mark.parametrize("entry", cases("mmmu_open_ended"))
def test_mmmu_open_vectors(entry: dict) -> None:
    parsed = M.mmmu_open_parse(entry["prediction"])
    assert sorted(str(p) for p in parsed) == sorted(entry["parsed"])
    assert float(M.mmmu_open_correct(entry["references"][0], parsed)) == entry["expected"]
    assert float(M.mmmu_open_correct(entry["references"], parsed)) == entry["expected"]  # list of golds


def _pope_expected_label(value: str | None) -> str | None:
    """Vector spelling -> pope_label output: VLMEvalKit 'Yes'/'No'/'Unknown', lmms-eval "other('...')"."""
    if value is None or value == "Unknown" or value.startswith("other("):
        return None
    return value.lower()


@pytest.mark.parametrize(("entry", "mode", "expected"), impl_cases("pope_answer_parsing", POPE_IMPLS))
def test_pope_label_vectors(entry: dict, mode: str | None, expected: str) -> None:
    assert M.pope_label(entry["prediction"], **({"mode": mode} if mode else {})) == _pope_expected_label(expected)


@pytest.mark.parametrize(("entry", "mode", "expected"), impl_cases("pope_aggregate", POPE_IMPLS))
def test_pope_metrics_vectors(entry: dict, mode: str | None, expected: dict[str, float]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zero denominators warn; the values are what is checked here
        got = M.pope_metrics(entry["prediction"], entry["references"], **({"mode": mode} if mode else {}))
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=TOL), key


@pytest.mark.parametrize(("entry", "mode", "expected"), impl_cases("gqa_exact_match", GQA_IMPLS))
def test_gqa_vectors(entry: dict, mode: str | None, expected: float) -> None:
    got = M.gqa_exact_match(entry["prediction"], entry["references"][0], **({"mode": mode} if mode else {}))
    assert got == expected


# Captioning. `tokenize` for the raw-string vectors: the pitfall vector is defined *without* PTB tokenisation and the
# empty predictions are "already tokenised"; everything else goes through the COCO pipeline.
CAPTION_TOKENIZE = {"no_ptb_tokenization_pitfall": "none", "empty_predictions": "none"}


def _caption_inputs(entry: dict, tokenized: bool) -> tuple[dict, dict]:
    ids = entry.get("image_ids") or list(range(len(entry["prediction"])))
    preds = entry["tokenized_prediction"] if tokenized else entry["prediction"]
    refs = entry["tokenized_references"] if tokenized else entry["references"]
    return dict(zip(ids, preds, strict=True)), dict(zip(ids, refs, strict=True))


def _check_caption_scores(entry: dict, corpus: dict, per_image: dict, keys: list[str]) -> None:
    for key in keys:
        tol = METEOR_TOL if key == "METEOR" else TOL
        assert corpus[key] == pytest.approx(entry["expected"][key], abs=tol), key
        for image_id, expected in entry.get("expected_per_image", {}).items():
            assert per_image[int(image_id)][key] == pytest.approx(expected[key], abs=tol), (image_id, key)


@pytest.mark.parametrize("entry", cases("coco_caption"))
def test_caption_vectors_pure_python(entry: dict) -> None:
    """Pure-Python BLEU / ROUGE-L / CIDEr-D, always run: on the stored tokenised captions when present."""
    keys = [k for k in entry["expected"] if k != "METEOR"]
    metrics = [m for m in M.CAPTION_METRICS if any(k.startswith(m) for k in keys)]
    tokenized = "tokenized_prediction" in entry
    preds, refs = _caption_inputs(entry, tokenized)
    tokenize = "none" if tokenized else CAPTION_TOKENIZE.get(entry["id"], "ptb_python")
    corpus, per_image = M.caption_scores_detailed(preds, refs, metrics, tokenize=tokenize, backend="python")
    _check_caption_scores(entry, corpus, per_image, keys)


@pytest.mark.parametrize("entry", [c for c in cases("coco_caption") if "tokenized_prediction" in c.values[0]])
def test_python_ptb_tokenizer_reproduces_stored_tokens(entry: dict) -> None:
    assert [M.ptb_tokenize(p) for p in entry["prediction"]] == entry["tokenized_prediction"]
    assert [[M.ptb_tokenize(r) for r in refs] for refs in entry["references"]] == entry["tokenized_references"]


@requires_java
@pytest.mark.parametrize("entry", cases("coco_caption"))
def test_caption_vectors_java_pipeline(entry: dict) -> None:
    """Full COCO pipeline through pycocoevalcap on the raw captions: PTBTokenizer, METEOR jar and all scorers."""
    keys = list(entry["expected"])
    metrics = [m for m in M.CAPTION_METRICS if any(k.startswith(m) for k in keys)]
    preds, refs = _caption_inputs(entry, tokenized=False)
    tokenize = CAPTION_TOKENIZE.get(entry["id"], "ptb")
    corpus, per_image = M.caption_scores_detailed(preds, refs, metrics, tokenize=tokenize, backend="pycocoevalcap")
    _check_caption_scores(entry, corpus, per_image, keys)


# ------------------------------------------------------------------------------------------------------------------
# Property tests (EVAL_SPEC.md §6.2)
# ------------------------------------------------------------------------------------------------------------------

VQA_MODES = ("canonical", "official", "lmms_vqav2", "vlmevalkit")


@pytest.mark.parametrize("mode", VQA_MODES)
@pytest.mark.parametrize(("m", "expected"), [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (7, 1.0), (10, 1.0)])
def test_vqa_closed_form(mode: str, m: int, expected: float) -> None:
    assert M.vqa_accuracy("2", ["2"] * m + ["3"] * (10 - m), mode=mode) == pytest.approx(expected, abs=TOL)
    if mode != "official":  # official skips normalisation when the answers are unanimous (m == 10)
        assert M.vqa_accuracy("two", ["2"] * m + ["3"] * (10 - m), mode=mode) == pytest.approx(expected, abs=TOL)


@pytest.mark.parametrize("mode", VQA_MODES)
def test_vqa_order_invariance(mode: str) -> None:
    rng = random.Random(1234)
    pool = ["yes", "Yes", "no", "a dog", "dog", "t-shirt", "t shirt", "2", "two", "man's", "1,000", "1000"]
    for _ in range(200):
        answers = [rng.choice(pool) for _ in range(10)]
        pred = rng.choice(pool)
        base = M.vqa_accuracy(pred, answers, mode=mode)
        shuffled = answers[:]
        rng.shuffle(shuffled)
        assert M.vqa_accuracy(pred, shuffled, mode=mode) == pytest.approx(base, abs=TOL)


def test_vqa_leave_one_out_is_by_index() -> None:
    # Identical answers are different annotators: 3 matching "yes" out of 10 -> 0.9, not fewer.
    assert M.vqa_accuracy("yes", ["yes"] * 3 + ["no"] * 7) == pytest.approx(0.9, abs=TOL)
    assert M.vqa_accuracy("yes", ["yes"] * 10, mode="official") == 1.0


def test_vqa_normalization_quirks() -> None:
    assert M.normalize_vqa_answer("x" + "." * 40) == "x" + "." * 8  # at most 32 periods are deleted
    assert M.normalize_vqa_answer("1,,2 apples") == "12 apples"  # mmf comma regex sees "1,,2"
    assert M.normalize_vqa_answer("1,,2 apples", mode="official") == "1 2 apples"
    assert M.normalize_vqa_answer("eleven") == "eleven"
    assert M.normalize_vqa_answer("a - b") == "b"  # "- " present: "-" deleted, then the article "a" dropped
    once = M.normalize_vqa_answer("x" + "." * 40)
    assert M.normalize_vqa_answer(once) == "x" != once  # not idempotent: never normalise twice
    with pytest.raises(ValueError):
        M.normalize_vqa_answer("x", mode="nope")


def test_anls_range_and_threshold() -> None:
    rng = random.Random(99)
    alphabet = "abcde XYZ"
    for _ in range(2000):
        pred = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))
        answers = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8))) for _ in range(rng.randint(1, 3))]
        score = M.anls(pred, answers)
        assert score == 0.0 or 0.5 <= score <= 1.0
    assert M.anls("ab", ["ax"]) == 0.5  # NL == 0.5 exactly is kept (code: score < 0.5 -> 0)
    assert M.anls("hellx   ", ["hello"]) == pytest.approx(1 - 1 / 8, abs=TOL)  # raw length in the denominator


def test_relaxed_accuracy_argument_order() -> None:
    # Vector "boundary_low": |95 - 100| / 100 = 0.05 passes; swapped, |100 - 95| / 95 = 0.0526 fails.
    assert M.relaxed_accuracy("95", ["100"]) == 1.0
    assert M.relaxed_accuracy("100", ["95"]) == 0.0
    assert M.relaxed_correctness("95", "100") and not M.relaxed_correctness("100", "95")
    # Symmetric only when both relative changes agree, e.g. equal values.
    assert M.relaxed_accuracy("100", ["100"]) == 1.0 and M.relaxed_accuracy("104.9", ["100"]) == 1.0
    assert M.relaxed_accuracy("105.1", ["100"]) == 0.0 and M.relaxed_accuracy("cat", ["Cat"]) == 1.0
    assert M.relaxed_accuracy("45", ["45%"]) == 0.0  # "%" converts only the side that carries it


def test_mmbench_circular_not_above_vanilla() -> None:
    rng = random.Random(5)
    texts = ["cat", "dog", "bird", "fish"]
    for _ in range(100):
        groups = {}
        for q in range(rng.randint(1, 8)):
            copies = []
            for k in range(4):
                rotated = texts[k:] + texts[:k]
                choices = dict(zip("ABCD", rotated, strict=True))
                gold = "ABCD"[rotated.index(texts[q % 4])]
                pred = rng.choice(["A", "B", "C", "D", "The answer is B", "dog", "no idea"])
                copies.append((pred, gold, choices))
            groups[q] = copies
        circular = M.mmbench_circular(groups)
        assert circular <= M.mmbench_vanilla(groups) + TOL
        assert circular <= M.mmbench_vanilla(groups, first_copy_only=True) + TOL


@pytest.mark.parametrize("mode", ("official", "lmms_eval", "vlmevalkit"))
def test_pope_f1_is_harmonic_mean(mode: str) -> None:
    rng = random.Random(11)
    outputs = ["Yes", "No", "yes.", "No, there is not.", "I think so", "NO", "", "Yes and no", "no"]
    for _ in range(200):
        n = rng.randint(1, 12)
        preds = [rng.choice(outputs) for _ in range(n)]
        labels = [rng.choice(["yes", "no"]) for _ in range(n)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = M.pope_metrics(preds, labels, mode=mode)
        p, r = got["precision"], got["recall"]
        assert got["f1"] == pytest.approx(2 * p * r / (p + r) if p + r else 0.0, abs=TOL)
        assert 0.0 <= got["accuracy"] <= 1.0 and 0.0 <= got["yes_ratio"] <= 1.0


def test_pope_zero_division_warns() -> None:
    with pytest.warns(UserWarning, match="zero denominator"):
        got = M.pope_metrics(["No", "No"], ["no", "no"])
    assert got["precision"] == got["recall"] == got["f1"] == 0.0 and got["accuracy"] == 1.0


def test_cider_single_image_is_zero() -> None:
    rng = random.Random(3)
    words = "a man dog riding wave on the surfboard red bus street".split()
    for _ in range(20):
        pred = " ".join(rng.choice(words) for _ in range(rng.randint(1, 10)))
        refs = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 10))) for _ in range(rng.randint(1, 5))]
        scores = M.caption_scores({"img": pred}, {"img": refs}, metrics=("CIDEr",), tokenize="none", backend="python")
        assert scores == {"CIDEr": 0.0}


# ------------------------------------------------------------------------------------------------------------------
# API behaviour beyond the vectors
# ------------------------------------------------------------------------------------------------------------------


def test_mmmu_fallback_never_touches_global_random() -> None:
    state = random.getstate()
    choices = {"A": "cat", "B": "dog"}
    assert M.extract_choice_mmmu("no idea", choices) is None
    generator = random.Random(42)
    first = [M.extract_choice_mmmu("no idea", choices, rng=generator) for _ in range(5)]
    replay = random.Random(42)
    assert first == [replay.choice(["A", "B"]) for _ in range(5)]  # a shared generator is one seeded stream
    assert random.getstate() == state


def test_mmmu_last_mention_wins() -> None:
    choices = {"A": "cat", "B": "dog", "C": "bird", "D": "fish"}
    assert M.extract_choice_mmmu("Between (A) and (C), I pick (C)", choices) == "C"
    assert M.extract_choice_mmmu("It is not A , it is D", choices) == "D"
    assert M.extract_choice_mmmu("the bird is bigger than the fish here", choices) == "D"


def test_vlmeval_refusal_and_position_rule() -> None:
    choices = {"A": "cat", "B": "dog", "C": "bird", "D": "fish"}
    assert M.extract_choice_vlmeval("Cannot determine the answer from this image", choices) == "Z"
    assert M.extract_choice_vlmeval("A dog is sitting on the mat.", choices) == "B"  # post #1175: text match
    assert M.extract_choice_vlmeval("A dog is sitting on the mat.", choices, version="pre1175") == "A"
    with pytest.raises(ValueError):
        M.extract_choice_vlmeval("A", choices, version="nope")


def test_caption_meteor_left_out_without_java(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(caption, "caption_backend_available", lambda: False)
    preds = {1: "a dog on a couch", 2: "a red bus"}
    refs = {1: ["a dog sitting on a couch"], 2: ["a red bus on a street", "a bus"]}
    with pytest.warns(UserWarning, match="METEOR"):
        scores = M.caption_scores(preds, refs, tokenize="none")
    assert set(scores) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"}
    with pytest.warns(UserWarning, match="PTB tokenizer approximation"):
        M.caption_scores(preds, refs, metrics=("CIDEr",))
    with pytest.raises(RuntimeError):
        M.caption_scores(preds, refs, backend="pycocoevalcap")


def test_caption_input_validation() -> None:
    with pytest.raises(ValueError):
        M.caption_scores({1: "a"}, {2: ["a"]}, tokenize="none", backend="python")
    with pytest.raises(ValueError):
        M.caption_scores({1: "a"}, {1: []}, tokenize="none", backend="python")
    with pytest.raises(ValueError):
        M.caption_scores({1: "a"}, {1: ["a"]}, metrics=("SPICE",), tokenize="none", backend="python")


def test_bleu_perfect_match_smoothing() -> None:
    scores = M.caption_scores({1: "a b c d e"}, {1: ["a b c d e"]}, metrics=("Bleu",), tokenize="none",
                              backend="python")
    assert scores["Bleu_4"] == pytest.approx(1.0, abs=1e-9) and scores["Bleu_4"] < 1.0
    assert math.isclose(scores["Bleu_1"], scores["Bleu_4"], rel_tol=1e-9)
