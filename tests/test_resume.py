"""A run killed with SIGKILL mid-training and resumed ends with the weights of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import torch
from conftest import REPO, vlmtune
from safetensors.torch import load_file

from vlmtune.train.fit import latest_complete_checkpoint

STEPS = ["optim.max_steps=60", "save_steps=5", "optim.batch_size=4", "logging_steps=5", "logger=none",
         "evaluate_at_end=false", "peft=lora"]


def _adapter(run_dir):
    return load_file(run_dir / "checkpoint" / "adapter_model.safetensors")


def test_sigkill_then_resume_equals_uninterrupted(pipeline):
    init = f"init_from={pipeline['pretrain'] / 'checkpoint'}"
    straight, killed = pipeline["runs"] / "straight", pipeline["runs"] / "killed"
    vlmtune("sft", f"run_dir={straight}", init, *STEPS)

    command = [sys.executable, "-m", "vlmtune.cli", "sft", f"run_dir={killed}", init, *STEPS]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.monotonic() + 300
    while latest_complete_checkpoint(killed / "trainer") is None and process.poll() is None:
        assert time.monotonic() < deadline, "no step checkpoint appeared"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "checkpoint").exists(), "the run must have been killed before it finished"
    resumed_from = latest_complete_checkpoint(killed / "trainer")

    output = vlmtune("sft", f"run_dir={killed}", init, *STEPS)  # resume=auto is the default
    assert f"resuming from {resumed_from}" in output
    expected, got = _adapter(straight), _adapter(killed)
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-6)


def test_an_interrupted_checkpoint_is_never_resumed_from(tmp_path):
    good, cut = tmp_path / "checkpoint-5", tmp_path / "checkpoint-10"
    good.mkdir()
    (good / "trainer_state.json").write_text("{}")
    cut.mkdir()  # killed before the Trainer wrote trainer_state.json, which it writes last
    (cut / "model.safetensors").write_bytes(b"partial")
    assert latest_complete_checkpoint(tmp_path) == good


def test_sigterm_writes_a_checkpoint_and_stops_then_resume_finishes(pipeline):
    init = f"init_from={pipeline['pretrain'] / 'checkpoint'}"
    run_dir = pipeline["runs"] / "preempted"
    steps = [s for s in STEPS if not s.startswith(("save_steps", "optim.max_steps"))]
    steps += ["save_steps=0", "optim.max_steps=400"]  # no periodic checkpoints: only SIGTERM writes one
    command = [sys.executable, "-m", "vlmtune.cli", "sft", f"run_dir={run_dir}", init, *steps]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    log = run_dir / "sft.log"
    while not (log.exists() and "parameters" in log.read_text()):  # the model is loaded, training starts
        assert time.monotonic() < deadline and process.poll() is None, "training did not start"
        time.sleep(0.1)
    time.sleep(3)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 128 + signal.SIGTERM
    saved = latest_complete_checkpoint(run_dir / "trainer")
    assert saved is not None and not (run_dir / "checkpoint").exists()
    assert 0 < int(saved.name.removeprefix("checkpoint-")) < 400

    output = vlmtune("sft", f"run_dir={run_dir}", init, *steps)
    assert f"resuming from {saved}" in output and (run_dir / "checkpoint" / "adapter_config.json").exists()


def test_parts_differing_in_dora_train_save_merge_and_resume_as_two_adapters(pipeline):
    """Vision with DoRA, LLM without: two peft adapters ("default" and "vision"), both trained, both saved, both
    merged by load_vlm, and both restored on resume (transformers alone would restore only the first)."""
    import shutil

    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from vlmtune.model.checkpoint import load_vlm

    # Tiny CLIP's features come from its first layer (feature_layer -2), so that layer's adapters get gradients.
    policy = ["model/vision=tiny_clip", "policy.vision.mode=lora", "policy.vision.use_dora=true",
              "optim.max_steps=4", "save_steps=2", "optim.batch_size=4", "logger=none", "evaluate_at_end=false"]
    straight, resumed = pipeline["runs"] / "dora-straight", pipeline["runs"] / "dora-resumed"
    vlmtune("sft", f"run_dir={straight}", *policy)
    adapter = straight / "checkpoint"
    vision = load_file(adapter / "vision" / "adapter_model.safetensors")
    assert vision and all("vision_tower" in n for n in vision) and any("lora_magnitude_vector" in n for n in vision)
    assert any(vision[n].abs().max() > 0 for n in vision if ".lora_B." in n), "the vision adapter must train"
    llm = _adapter(straight)
    assert not any("magnitude" in n or "vision_tower" in n for n in llm)
    assert any(llm[n].abs().max() > 0 for n in llm if ".lora_B." in n), "the LLM adapter must train"

    merged, processor = load_vlm(adapter)
    unmerged = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(straight / "base"), adapter)
    unmerged.load_adapter(adapter / "vision", "vision")
    unmerged.base_model.set_adapter(["default", "vision"])
    unmerged.eval()
    base = AutoModelForImageTextToText.from_pretrained(straight / "base").eval()
    inputs = processor(text=["<image>\nWhat color is the circle?"], images=[_image()], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(merged(**inputs).logits, unmerged(**inputs).logits, rtol=1e-4, atol=1e-4)
        features = merged.model.get_image_features(pixel_values=inputs["pixel_values"])
        base_features = base.model.get_image_features(pixel_values=inputs["pixel_values"])
    assert not torch.allclose(_tensor(features), _tensor(base_features)), "the merged vision adapter must count"

    shutil.copytree(straight / "trainer" / "checkpoint-2", resumed / "trainer" / "checkpoint-2")
    output = vlmtune("sft", f"run_dir={resumed}", *policy)
    assert "resuming from" in output
    for name in ("adapter_model.safetensors", "vision/adapter_model.safetensors"):
        expected, got = load_file(adapter / name), load_file(resumed / "checkpoint" / name)
        assert expected.keys() == got.keys()
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-6)

    # DPO from that checkpoint trains both adapters too (TRL's reference-adapter handling keeps them active).
    dpo = pipeline["runs"] / "dora-dpo"
    vlmtune("dpo", f"run_dir={dpo}", f"init_from={adapter}", *policy[1:3], "optim.max_steps=2", "optim.batch_size=4",
            "logger=none")
    for name in ("adapter_model.safetensors", "vision/adapter_model.safetensors"):
        weights = load_file(dpo / "checkpoint" / name)
        assert any(weights[n].abs().max() > 0 for n in weights if ".lora_B." in n), name


def _tensor(features) -> torch.Tensor:
    """get_image_features returns a tensor, a list of tensors or an output object, by transformers version."""
    features = getattr(features, "pooler_output", features)
    return torch.cat(list(features)) if isinstance(features, (list, tuple)) else features


def _image():
    from PIL import Image

    from vlmtune.tiny import IMAGE_SIZE

    return Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), "red")
