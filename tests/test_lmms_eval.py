"""The lmms-eval bridge: its request logic answers exactly as `vlmtune evaluate` does, and, where lmms-eval is
installed (an optional harness), lmms-eval itself runs the `vlmtune` model on a local task for both request kinds."""

from __future__ import annotations

import importlib.util
import json
import textwrap
from pathlib import Path

import pytest
import torch

from vlmtune.config import DataConfig, LLMConfig, ModelConfig, ProjectorConfig, VisionConfig
from vlmtune.data.images import load_image
from vlmtune.data.records import read_split, split_prompt
from vlmtune.eval.generate import generate_answers
from vlmtune.eval.lmms_requests import (
    GenerationSettings,
    generate_for_requests,
    prompt_record,
    score_continuation,
)
from vlmtune.model.checkpoint import load_vlm, save_checkpoint
from vlmtune.model.compose import compose

HAS_LMMS_EVAL = importlib.util.find_spec("lmms_eval") is not None
needs_lmms_eval = pytest.mark.skipif(not HAS_LMMS_EVAL, reason="lmms-eval is not installed (optional; see README, "
                                     "'lmms-eval'): only the bridge's request logic is tested")


@pytest.fixture(scope="module")
def checkpoints(tiny, tmp_path_factory) -> dict[str, Path]:
    """A plain `llava` checkpoint (MLP projector) and a `vlmtune`-typed one (pixel-shuffle projector)."""
    out = {}
    for model_type, projector in [("llava", "mlp2x_gelu"), ("vlmtune", "pixel_shuffle")]:
        cfg = ModelConfig(vision=VisionConfig(path=str(tiny / "vision" / "siglip"), select_strategy="full",
                                              feature_layer=-1),
                          llm=LLMConfig(path=str(tiny / "llm" / "llama")), projector=ProjectorConfig(name=projector))
        out[model_type] = save_checkpoint(*compose(cfg), tmp_path_factory.mktemp(model_type) / "ckpt", {})
        assert json.loads((out[model_type] / "config.json").read_text())["model_type"] == model_type
    return out


@pytest.fixture(scope="module")
def samples(shapes) -> list[dict]:
    return read_split(DataConfig(test=str(shapes / "test.json")), "test")[:6]


def _question(sample: dict) -> str:
    """The human turn as lmms-eval hands it over: one string, with an `<image>` placeholder where the image goes."""
    return "".join("<image>" if p["type"] == "image" else p["text"] for p in sample["messages"][0]["content"])


def test_prompts_are_split_like_vlmtunes_own_records(samples):
    for sample in samples:
        record = prompt_record(sample["id"], _question(sample), sample["images"])
        assert split_prompt(record["messages"])[0] == split_prompt(sample["messages"])[0]
    # No placeholder: the images go first, on a line of their own (lmms-eval's llava models do the same).
    assert prompt_record(0, "What colour?", ["a.png"])["messages"][0]["content"] == [
        {"type": "image", "text": None}, {"type": "text", "text": "\nWhat colour?"}]
    with pytest.raises(ValueError, match="1 <image> placeholders but the document has 2 images"):
        prompt_record(0, "<image> and?", ["a.png", "b.png"])


def test_generation_answers_as_vlmtune_evaluate_whatever_the_grouping(checkpoints, samples):
    model, processor = load_vlm(checkpoints["llava"])
    expected = [r["prediction"] for r in generate_answers(model, processor, samples, batch_size=4, max_new_tokens=6)]
    long = GenerationSettings(max_new_tokens=6, until=())
    requests = [(prompt_record(s["id"], _question(s), s["images"]), long) for s in samples]
    assert generate_for_requests(model, processor, requests, batch_size=4) == expected
    assert generate_for_requests(model, processor, requests, batch_size=1) == expected

    # Requests with other settings are answered in their own batches, in request order, cut at `until`. Each group
    # is compared with `vlmtune evaluate` on the same group: a batch of other rows pads differently, and on a random
    # tiny model a near-tie in the logits may then break the other way on another CPU (it did, on CI).
    evens = [r["prediction"] for r in generate_answers(model, processor, samples[::2], batch_size=4,
                                                       max_new_tokens=6)]
    odds = [r["prediction"] for r in generate_answers(model, processor, samples[1::2], batch_size=4,
                                                      max_new_tokens=6)]
    stop = next(a[1] for a in odds if len(a.strip()) > 1)
    short = GenerationSettings(max_new_tokens=6, until=(stop,))
    mixed = [(record, short if i % 2 else long) for i, (record, _) in enumerate(requests)]
    answers = generate_for_requests(model, processor, mixed, batch_size=4)
    assert answers[::2] == evens
    assert answers[1::2] == [a.split(stop)[0].strip() for a in odds]
    assert any(a != b for a, b in zip(answers[1::2], odds, strict=True))  # the stop string did cut something


@torch.no_grad()
def test_loglikelihood_is_the_log_probability_greedy_decoding_sees(checkpoints, samples):
    model, processor = load_vlm(checkpoints["vlmtune"])
    tokenizer = processor.tokenizer
    checked = 0
    for sample in samples:
        record = prompt_record(sample["id"], _question(sample), sample["images"])
        text = processor.apply_chat_template(split_prompt(record["messages"])[0], add_generation_prompt=True,
                                             tokenize=False)
        inputs = processor(text=[text], images=[load_image(i, "test") for i in sample["images"]],
                           return_tensors="pt", add_special_tokens=False)
        out = model.generate(**inputs, do_sample=False, max_new_tokens=1, output_logits=True,
                             return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id)
        log_probs = torch.log_softmax(out.logits[0][0].float(), dim=-1)
        best, second = log_probs.topk(2).indices.tolist()
        for token, greedy in [(best, True), (second, False)]:
            continuation = tokenizer.decode([token])
            if tokenizer.encode(continuation, add_special_tokens=False) != [token]:
                continue  # a token that does not survive decoding cannot be asked about as text
            value, tokens, is_greedy = score_continuation(model, processor, record, continuation)
            assert tokens == 1 and is_greedy == greedy
            assert value == pytest.approx(float(log_probs[token]), abs=1e-4)
            checked += 1
    assert checked >= 4


TASK_UTILS = '''
def doc_to_visual(doc):
    return [doc["image"].convert("RGB")]

def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]

def process_results(doc, results):
    answer = results[0].strip().lower().rstrip(".").strip()
    return {"accuracy": float(answer == doc["answer"].strip().lower())}
'''


def _write_task(folder: Path, samples: list[dict]) -> None:
    """An lmms-eval generation task over `samples` (a saved datasets folder, a YAML file and its utils.py)."""
    import datasets

    datasets.DatasetDict({"test": datasets.Dataset.from_dict({
        "id": [s["id"] for s in samples], "question": [_question(s) for s in samples],
        "answer": [split_prompt(s["messages"])[1] for s in samples], "image": [str(s["images"][0]) for s in samples],
    }).cast_column("image", datasets.Image())}).save_to_disk(str(folder / "data"))
    (folder / "utils.py").write_text(TASK_UTILS)
    (folder / "shapes.yaml").write_text(textwrap.dedent(f"""
        task: vlmtune_shapes
        dataset_path: {folder / "data"}
        dataset_kwargs:
          load_from_disk: true
        test_split: test
        output_type: generate_until
        doc_to_visual: !function utils.doc_to_visual
        doc_to_text: !function utils.doc_to_text
        doc_to_target: answer
        generation_kwargs:
          max_new_tokens: 6
          until: ["\\n\\n"]
          do_sample: false
        process_results: !function utils.process_results
        metric_list:
          - metric: accuracy
            aggregation: mean
            higher_is_better: true
    """))


def _vlmtune_model_class():
    from lmms_eval.models import MODEL_REGISTRY_V2

    from vlmtune.eval.lmms_eval_model import manifest

    if "vlmtune" not in MODEL_REGISTRY_V2.list_model_names():
        # The entry point exists only where vlmtune is pip-installed from this pyproject; register it by hand.
        MODEL_REGISTRY_V2.register_manifest(manifest())
    return MODEL_REGISTRY_V2.get_model_class("vlmtune")


@needs_lmms_eval
@pytest.mark.parametrize("model_type", ["llava", "vlmtune"])
def test_lmms_eval_scores_the_vlmtune_model_on_a_local_task(checkpoints, samples, tmp_path, model_type):
    from lmms_eval import evaluator
    from lmms_eval.tasks import TaskManager

    from vlmtune.eval.lmms_eval_model import VlmtuneLMM

    assert _vlmtune_model_class() is VlmtuneLMM
    _write_task(tmp_path, samples)
    out = evaluator.simple_evaluate(
        model="vlmtune", model_args=f"pretrained={checkpoints[model_type]}", batch_size=4, log_samples=True,
        tasks=["vlmtune_shapes"], task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False))

    # The answers and accuracy of vlmtune's own evaluation with the same settings.
    model, processor = load_vlm(checkpoints[model_type])
    rows = generate_answers(model, processor, samples, batch_size=4, max_new_tokens=6, stop_strings=["\n\n"])
    logged = sorted(out["samples"]["vlmtune_shapes"], key=lambda s: s["doc_id"])
    assert [s["filtered_resps"][0] for s in logged] == [r["prediction"] for r in rows]
    from vlmtune.eval.scoring import exact_match

    accuracy = sum(exact_match(r["prediction"], r) for r in rows) / len(rows)
    assert out["results"]["vlmtune_shapes"]["accuracy,none"] == accuracy


@needs_lmms_eval
def test_lmms_eval_loglikelihood_requests(checkpoints, samples):
    # Called directly with lmms-eval's own Instance objects: lmms-eval 0.7.2-0.7.3's evaluator turns every model's
    # (value, is_greedy) tuple into a string (unwrap_generation_output), so its loglikelihood tasks fail whatever the
    # model; 0.6.1 passes the tuples on.
    from lmms_eval.api.instance import Instance
    from PIL import Image

    lm = _vlmtune_model_class().create_from_arg_string(f"pretrained={checkpoints['vlmtune']}", {"batch_size": 1})
    docs = [{"image": Image.open(s["images"][0]), "question": _question(s)} for s in samples]
    lm.task_dict = {"shapes": {"test": docs}}
    choices = [" red", " green", " blue", " 2"]
    requests = [Instance("loglikelihood", (doc["question"], choice, lambda d: [d["image"]], i, "shapes", "test"), idx=j,
                         metadata={"task": "shapes", "doc_id": i, "repeats": 1})
                for i, doc in enumerate(docs) for j, choice in enumerate(choices)]
    requests.append(Instance("loglikelihood", ("", " red"), idx=0, metadata={"task": "shapes", "doc_id": 0,
                                                                              "repeats": 1}))
    results = lm.loglikelihood(requests)
    model, processor = load_vlm(checkpoints["vlmtune"])
    for request, (value, greedy) in zip(requests, results, strict=True):
        context, continuation = request.args[:2]
        images = [docs[request.args[3]]["image"]] if len(request.args) > 2 else []
        log_prob, tokens, is_greedy = score_continuation(model, processor, prompt_record(0, context, images),
                                                         continuation)
        # lmms-eval's convention: the mean NLL per token (its models return their loss; multiple_choice takes argmin)
        assert value == pytest.approx(-log_prob / tokens) and greedy == is_greedy
