"""Runs killed with SIGKILL at any moment (mid-step, mid-save, twice in a row) and run again with the same command end
with the weights of an uninterrupted run, for every training path; preemption (SIGTERM / SIGUSR1) saves one step that
every process agrees on and resumes to the same weights."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, run_cli, vlmtune
from safetensors.torch import load_file

from vlmtune.train.checkpoints import COMPLETE, is_complete, latest_complete_checkpoint
from vlmtune.train.preemption import EXIT_CODE, READY

COMMON = ["optim.max_steps=12", "save_steps=2", "optim.batch_size=4", "logging_steps=2", "logger=none",
          "evaluate_at_end=false", "optim.warmup_ratio=0"]


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint directory (adapters in subfolders included), keyed by file and name."""
    tensors = {}
    for file in sorted(checkpoint.rglob("*.safetensors")):
        tensors |= {f"{file.relative_to(checkpoint)}:{k}": v for k, v in load_file(file).items()}
    assert tensors, f"no weights in {checkpoint}"
    return tensors


def assert_same_weights(got_dir: Path, expected_dir: Path, atol: float = 1e-6) -> None:
    expected, got = _weights(expected_dir / "checkpoint"), _weights(got_dir / "checkpoint")
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=atol, msg=name)


def _start(recipe: str, run_dir: Path, args: list[str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "vlmtune.cli", recipe, f"run_dir={run_dir}", *args]
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def _kill_when(process: subprocess.Popen, ready, what: str) -> None:
    """SIGKILL the process (and its children) as soon as `ready()`, polling every 5 ms."""
    deadline = time.monotonic() + 600
    while not ready():
        assert process.poll() is None, f"the run ended before {what}"
        assert time.monotonic() < deadline, f"{what} never happened"
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _completed(trainer: Path, step: int):
    return lambda: is_complete(trainer / f"checkpoint-{step}")


def _appeared(trainer: Path, step: int):
    return lambda: (trainer / f"checkpoint-{step}").exists()


def kill_and_resume(recipe: str, runs: Path, args: list[str], kills) -> tuple[Path, Path, list[str]]:
    """Run `recipe` uninterrupted and, beside it, killed at each moment of `kills` ((when, step): "completed" = just
    after checkpoint-<step> is whole, i.e. mid-step; "appeared" = as soon as its folder exists, i.e. mid-save), each
    kill followed by the same command again; return both run directories and the resumed runs' outputs."""
    straight, killed = runs / "straight", runs / "killed"
    uninterrupted = _start(recipe, straight, args)
    outputs = []
    try:
        process = _start(recipe, killed, args)
        for when, step in kills:
            moment = {"completed": _completed, "appeared": _appeared}[when](killed / "trainer", step)
            _kill_when(process, moment, f"checkpoint-{step} {when}")
            assert not (killed / "checkpoint").exists(), "killed before it finished"
            if (when, step) != kills[-1]:
                process = _start(recipe, killed, args)
        outputs.append(vlmtune(recipe, f"run_dir={killed}", *args))  # resume=auto is the default
    finally:
        assert uninterrupted.wait(timeout=600) == 0, "the uninterrupted run failed"
    return straight, killed, outputs


# path: (recipe, overrides, the pipeline checkpoint it starts from: "pretrain", "sft" or None = composed parts)
PATHS = {
    "sft-lora": ("sft", ["peft=lora"], "pretrain"),
    "sft-full": ("sft", ["peft=none"], "pretrain"),
    "sft-qlora": ("sft", ["peft=qlora"], "pretrain"),
    # Tiny CLIP's features come from its first layer, so that layer's DoRA adapter (an adapter of its own) trains.
    "sft-dora-per-part": ("sft", ["model/vision=tiny_clip", "policy.vision.mode=lora", "policy.vision.use_dora=true"],
                          None),
    "sft-packing": ("sft", ["data.packing=true"], "pretrain"),
    "sft-group-by-length": ("sft", ["data.group_by_length=true"], "pretrain"),
    "sft-streaming": ("sft", ["data.streaming=true"], "pretrain"),
    "pretrain": ("pretrain", [], None),
    "dpo": ("dpo", [], "sft"),
    "contrastive": ("contrastive", [], None),
}


@pytest.mark.parametrize("path", list(PATHS))
def test_a_kill_mid_step_then_the_same_command_ends_with_the_uninterrupted_weights(pipeline, path, tmp_path):
    recipe, args, start = PATHS[path]
    args = [*COMMON, *args, *([f"init_from={pipeline[start] / 'checkpoint'}"] if start else [])]
    straight, killed, outputs = kill_and_resume(recipe, tmp_path, args, [("completed", 4)])
    assert "resuming from" in outputs[-1]
    assert_same_weights(killed, straight)


def test_pretrain_with_the_vision_feature_cache_resumes_exactly(cache, tmp_path):
    args = [*COMMON, f"vision_feature_cache={tmp_path / 'features'}"]  # both runs share it, as reruns of one do
    straight, killed, outputs = kill_and_resume("pretrain", tmp_path, args, [("completed", 4)])
    assert "resuming from" in outputs[-1]
    assert_same_weights(killed, straight)


def test_full_fine_tune_killed_mid_save_and_twice_in_a_row(pipeline, tmp_path):
    """The path that used to drift (transformers' resume loaded no weights of a full Llava checkpoint): killed just
    after checkpoint-4 is whole, run again, killed again as checkpoint-8 is being written, run again."""
    args = [*COMMON, "peft=none", f"init_from={pipeline['pretrain'] / 'checkpoint'}"]
    straight, killed, outputs = kill_and_resume("sft", tmp_path, args, [("completed", 4), ("appeared", 8)])
    assert "resuming from" in outputs[-1]
    assert not any(p.exists() and not is_complete(p) for p in (killed / "trainer").glob("checkpoint-*"))
    assert_same_weights(killed, straight)


def test_an_interrupted_checkpoint_is_never_resumed_from(tmp_path):
    from vlmtune.train.checkpoints import resume_point

    good, cut = tmp_path / "checkpoint-5", tmp_path / "checkpoint-10"
    good.mkdir()
    (good / COMPLETE).write_text("{}")
    cut.mkdir()  # killed before every process had written its part: never marked complete
    (cut / "trainer_state.json").write_text("{}")
    assert latest_complete_checkpoint(tmp_path) == good
    assert resume_point("auto", tmp_path) == str(good) and not cut.exists(), "the cut checkpoint is removed"


class _Output:
    """Reads a process's output in a thread (so the pipe never fills) and waits for a line."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.text = ""
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process) -> None:
        for line in process.stdout:
            self.text += line

    def wait_for(self, needle: str, process: subprocess.Popen, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.text:
            assert process.poll() is None, f"exited {process.returncode} before printing {needle!r}:\n{self.text}"
            assert time.monotonic() < deadline, f"{needle!r} not printed:\n{self.text}"
            time.sleep(0.02)

    def close(self) -> str:
        self._thread.join(timeout=60)
        return self.text


def _popen(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_signal_before_training_exits_cleanly_and_the_same_command_runs(pipeline, tmp_path):
    args = [*COMMON, "optim.max_steps=4", f"init_from={pipeline['pretrain'] / 'checkpoint'}"]
    run_dir = tmp_path / "early"
    process = _popen([sys.executable, "-m", "vlmtune.cli", "sft", f"run_dir={run_dir}", *args])
    output = _Output(process)
    output.wait_for(READY, process)  # the handlers are in place; the model is not even loaded yet
    process.send_signal(signal.SIGUSR1)
    assert process.wait(timeout=120) == EXIT_CODE
    text = output.close()
    assert "before training started" in text and "Traceback" not in text
    assert latest_complete_checkpoint(run_dir / "trainer") is None and (run_dir / "config.yaml").exists()
    vlmtune("sft", f"run_dir={run_dir}", *args)
    assert (run_dir / "checkpoint" / "adapter_config.json").exists()


def test_sigterm_to_one_of_two_ranks_saves_one_agreed_step_and_resumes_to_the_uninterrupted_weights(pipeline,
                                                                                                   tmp_path):
    import psutil
    from test_distributed import launch

    args = [*COMMON, "optim.max_steps=40", "optim.batch_size=2", f"init_from={pipeline['pretrain'] / 'checkpoint'}"]
    straight, preempted = tmp_path / "straight", tmp_path / "preempted"
    run_cli(*launch(2), "recipes/sft.py", f"run_dir={straight}", *args)

    launcher = _popen([*launch(2), "recipes/sft.py", f"run_dir={preempted}", *args])
    output = _Output(launcher)
    _kill_when_ready = _completed(preempted / "trainer", 4)
    deadline = time.monotonic() + 300
    while not _kill_when_ready():
        assert launcher.poll() is None and time.monotonic() < deadline, output.text
        time.sleep(0.01)
    ranks = {int(p.environ().get("RANK", -1)): p for p in psutil.Process(launcher.pid).children(recursive=True)
             if "RANK" in p.environ()}
    ranks[1].send_signal(signal.SIGTERM)  # one rank only: the other learns it through the step's all-reduce
    launcher.wait(timeout=300)
    text = output.close()
    assert text.count("preempted (") == 2, text  # both ranks stopped on the same step, after the save
    saved = latest_complete_checkpoint(preempted / "trainer")
    assert saved is not None and 4 <= int(saved.name.removeprefix("checkpoint-")) < 40, text
    assert not (preempted / "checkpoint").exists()

    output = run_cli(*launch(2), "recipes/sft.py", f"run_dir={preempted}", *args)
    assert f"resuming from {saved}" in output
    assert_same_weights(preempted, straight)


def test_sigterm_to_contrastive_training_saves_a_step_and_resumes_to_the_uninterrupted_weights(cache, tmp_path):
    """The contrastive recipe (its own Trainer) keeps the same promise as the others: SIGTERM saves a step, exits
    143, and the same command resumes to the uninterrupted weights."""
    args = [*COMMON, "optim.max_steps=30"]
    straight, preempted = tmp_path / "straight", tmp_path / "preempted"
    vlmtune("contrastive", f"run_dir={straight}", *args)
    process = _popen([sys.executable, "-m", "vlmtune.cli", "contrastive", f"run_dir={preempted}", *args])
    output = _Output(process)
    ready, deadline = _completed(preempted / "trainer", 4), time.monotonic() + 300
    while not ready():
        assert process.poll() is None and time.monotonic() < deadline, output.text
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=300) == EXIT_CODE, output.close()
    text = output.close()
    saved = latest_complete_checkpoint(preempted / "trainer")
    assert "preempted (SIGTERM)" in text and saved is not None and not (preempted / "checkpoint").exists(), text
    assert f"resuming from {saved}" in vlmtune("contrastive", f"run_dir={preempted}", *args)
    assert_same_weights(preempted, straight)


def test_parts_differing_in_dora_train_save_and_merge_as_two_adapters(pipeline):
    """Vision with DoRA, LLM without: two peft adapters ("default" and "vision"), both trained, both saved, both
    merged by load_vlm (resuming both: the sft-dora-per-part path above; transformers alone restores only the
    first)."""
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from vlmtune.model.checkpoint import load_vlm

    # Tiny CLIP's features come from its first layer (feature_layer -2), so that layer's adapters get gradients.
    policy = ["model/vision=tiny_clip", "policy.vision.mode=lora", "policy.vision.use_dora=true",
              "optim.max_steps=4", "optim.batch_size=4", "logger=none", "evaluate_at_end=false"]
    straight = pipeline["runs"] / "dora-straight"
    vlmtune("sft", f"run_dir={straight}", *policy)
    adapter = straight / "checkpoint"
    vision = load_file(adapter / "vision" / "adapter_model.safetensors")
    assert vision and all("vision_tower" in n for n in vision) and any("lora_magnitude_vector" in n for n in vision)
    assert any(vision[n].abs().max() > 0 for n in vision if ".lora_B." in n), "the vision adapter must train"
    llm = load_file(adapter / "adapter_model.safetensors")
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
