"""Contrastive image-text training: the losses, the recipe on composed towers and on a CLIP checkpoint, LoRA, several
processes against one, and the saved vision tower composing a VLM."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import vlmtune
from safetensors.torch import load_file

from vlmtune.contrastive.data import swapped
from vlmtune.contrastive.loss import clip_loss, siglip_loss

STEPS = ["optim.max_steps=3", "optim.batch_size=8", "logging_steps=1", "logger=none", "eval.batch_size=8"]


def _embeddings(n: int = 6, dim: int = 8, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    image, text = (torch.nn.functional.normalize(torch.randn(n, dim, generator=generator), dim=-1) for _ in range(2))
    return image, text


def test_clip_loss_is_transformers_clip_loss():
    from transformers.models.clip.modeling_clip import image_text_contrastive_loss as reference

    image, text = _embeddings()
    log_scale = torch.tensor(math.log(1 / 0.07))
    expected = reference(text @ image.T * log_scale.exp())  # transformers takes logits per text
    torch.testing.assert_close(clip_loss(image, text, log_scale), expected)


def test_siglip_loss_is_the_papers_sigmoid_loss():
    image, text = _embeddings()
    log_scale, bias = torch.tensor(math.log(10.0)), torch.tensor(-10.0)
    logits = image @ text.T * 10.0 - 10.0
    expected = -sum(torch.nn.functional.logsigmoid(logits[i, j] if i == j else -logits[i, j])
                    for i in range(6) for j in range(6)) / 6
    torch.testing.assert_close(siglip_loss(image, text, log_scale, bias), expected)


def test_hard_negatives_swap_phrases_or_words_and_only_count_when_they_differ():
    assert swapped("a red circle and a blue square.", "x") == "a blue square and a red circle."
    original = "a red circle, a blue square and a green triangle."
    three = swapped(original, "x")
    assert three != original and three.endswith(".")
    assert sorted(three.rstrip(".").replace(" and ", ", ").split(", ")) == sorted(
        original.rstrip(".").replace(" and ", ", ").split(", "))
    assert swapped("two dogs", "x") == "dogs two"
    assert swapped("a red circle and a red circle.", "x") is None and swapped("dog", "x") is None
    image, text = _embeddings()
    negatives, log_scale = _embeddings(seed=1)[1], torch.tensor(2.0)
    none = torch.zeros(6, dtype=torch.bool)
    for loss, bias in ((clip_loss, None), (siglip_loss, torch.tensor(-3.0))):
        # A negative that could not be made is no negative at all; one that could raises the loss.
        plain = loss(image, text, log_scale, bias)
        torch.testing.assert_close(loss(image, text, log_scale, bias, negatives, none), plain)
        assert loss(image, text, log_scale, bias, negatives, ~none) > plain


def _weights(run_dir):
    return load_file(run_dir / "checkpoint" / "model.safetensors")


@pytest.fixture(scope="module")
def contrastive_run(cache, tmp_path_factory):
    """The default recipe (tiny CLIP vision tower + tiny text encoder joined by new heads, CLIP loss), a few steps."""
    run = tmp_path_factory.mktemp("contrastive") / "run"
    output = vlmtune("contrastive", f"run_dir={run}", *STEPS)
    return run, output


def test_contrastive_saves_a_dual_encoder_and_a_vision_tower_a_vlm_composes(contrastive_run, tiny):
    from transformers import AutoModel, VisionTextDualEncoderModel

    run, output = contrastive_run
    assert "parameters" in output and "held-out retrieval" in output
    dual = AutoModel.from_pretrained(run / "checkpoint")
    assert isinstance(dual, VisionTextDualEncoderModel)
    start = load_file(tiny / "vision" / "clip" / "model.safetensors")
    tower = load_file(run / "vision" / "model.safetensors")
    assert tower.keys() == start.keys()  # an ordinary CLIP vision checkpoint, trained
    assert any(not torch.equal(tower[k], start[k]) for k in start)
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("image_to_text/recall@1", "text_to_image/recall@10", "zero_shot/accuracy",
                "before/image_to_text/recall@1"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert json.loads((run / "checkpoint" / "contrastive.json").read_text())["loss"] == "clip"
    # model/vision picks the tower by path: sft would compose it (describe composes without training).
    described = vlmtune("describe", "model/vision=tiny_clip", f"model.vision.path={run / 'vision'}")
    assert str(run / "vision") in described and "9 image tokens per image" in described


def test_evaluate_scores_a_dual_encoder_as_the_retrieval_task(contrastive_run, tmp_path):
    run, _ = contrastive_run
    vlmtune("evaluate", f"run_dir={tmp_path}", f"checkpoint={run / 'checkpoint'}", "eval/task=retrieval",
            "data=shapes_captions", "logger=none", "eval.batch_size=8")
    scored, trained = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path, run))
    assert scored == {k: v for k, v in trained.items() if not k.startswith("before/")}
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert all(row["image_to_text_rank"] >= 0 and row["prediction"] for row in rows)


def test_two_processes_train_the_pair_one_process_trains(tiny, tmp_path):
    """Embeddings gathered with their gradients: 2 ranks x batch 4 take exactly the steps of 1 rank x batch 8,
    temperature, SigLIP bias and hard negatives included."""
    steps = ["optim.max_steps=3", "logger=none", "evaluate_at_end=false", "loss=siglip", "negatives=swap"]
    one, two = tmp_path / "one", tmp_path / "two"
    vlmtune("contrastive", f"run_dir={one}", *steps, "optim.batch_size=8")
    vlmtune("contrastive", f"run_dir={two}", *steps, "optim.batch_size=4", "launcher=ddp", "launcher.num_processes=2")
    expected, got = _weights(one), _weights(two)
    start = {f"vision_model.{k}": v for k, v in load_file(tiny / "vision" / "clip" / "model.safetensors").items()}
    assert expected.keys() == got.keys()
    assert any(not torch.equal(expected[k], start[k]) for k in start if k in expected), "it must have trained"
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-5, msg=key)
    bias = [json.loads((d / "checkpoint" / "contrastive.json").read_text())["logit_bias"] for d in (one, two)]
    assert bias[0] != -10.0 and abs(bias[0] - bias[1]) < 1e-5


def test_lora_on_a_clip_checkpoint_trains_adapters_and_saves_merged_towers(tiny, tmp_path):
    """model.path: a CLIPModel (tiny/dual/clip) with LoRA on its vision tower and a frozen text tower."""
    output = vlmtune("contrastive", f"run_dir={tmp_path}", f"model.path={tiny / 'dual' / 'clip'}",
                     "policy.vision.mode=lora", "policy.text.mode=frozen", "peft.r=4", "negatives=swap", *STEPS)
    assert "vision" in output and "heads" in output
    start, end = load_file(tiny / "dual" / "clip" / "model.safetensors"), _weights(tmp_path)
    assert start.keys() == end.keys()  # merged: a plain CLIPModel again, no adapter keys
    changed = {k for k in start if not torch.equal(start[k], end[k])}
    assert any(k.startswith("vision_model.") and "q_proj" in k for k in changed)  # LoRA merged into attention
    assert not any(k.startswith("text_model.") for k in changed)  # frozen
    assert {"visual_projection.weight", "text_projection.weight", "logit_scale"} <= changed
    assert not any(k.startswith("vision_model.") and "mlp" in k for k in changed)  # LoRA targets attention only


def test_bad_inputs_fail_with_the_key_to_fix(cache, tmp_path, tiny):
    with pytest.raises(AssertionError, match="loss='hinge' is not known; valid values: clip, siglip"):
        vlmtune("contrastive", f"run_dir={tmp_path / 'a'}", "loss=hinge", *STEPS)
    with pytest.raises(AssertionError, match="not a dual encoder"):
        vlmtune("contrastive", f"run_dir={tmp_path / 'b'}", f"model.path={tiny / 'vision' / 'siglip'}", *STEPS)
    with pytest.raises(AssertionError, match="contrastive training runs on launcher=single or launcher=ddp"):
        vlmtune("contrastive", f"run_dir={tmp_path / 'z'}", "launcher=zero2", "launcher.num_processes=2", *STEPS)
    with pytest.raises(AssertionError, match="an image-caption pair needs exactly one"):
        bad = tmp_path / "captions.json"
        bad.write_text(json.dumps([{"id": "x", "conversations": [{"from": "human", "value": "Describe."},
                                                                  {"from": "gpt", "value": "a red circle."}]}]))
        vlmtune("contrastive", f"run_dir={tmp_path / 'c'}", f"data.train={bad}", *STEPS)
