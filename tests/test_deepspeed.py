"""DeepSpeed ZeRO-2 and ZeRO-3 on 2 CPU ranks (gloo), launched the way users launch them (`vlmtune <recipe>
launcher=zero3 launcher.num_processes=2`): each recipe ends with the weights of one process taking the same global
batch, writes a checkpoint that plain transformers loads, and a run killed with SIGKILL resumes exactly from its
sharded step checkpoints. `make install` installs DeepSpeed; without it these fail (launcher=zero* says how to
install it), never skip."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil
import torch
from conftest import FAST, REPO, vlmtune
from safetensors.torch import load_file

from vlmtune.train.checkpoints import latest_complete_checkpoint

QUIET = ["logger=none", "evaluate_at_end=false"]


def _zero(stage: int) -> list[str]:
    return [f"launcher=zero{stage}", "launcher.num_processes=2"]


def _assert_same_weights(expected: dict, got: dict, atol: float = 1e-5) -> None:
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=atol, msg=key)


def test_zero3_full_sft_equals_one_rank_resumes_after_sigkill_and_saves_a_plain_llava(pipeline):
    init = f"init_from={pipeline['pretrain'] / 'checkpoint'}"
    steps = ["peft=none", "optim.max_steps=30", "logging_steps=5", *QUIET]
    one, killed = pipeline["runs"] / "full-1rank", pipeline["runs"] / "full-zero3"
    vlmtune("sft", f"run_dir={one}", init, *steps, "optim.batch_size=4")

    sharded = [*_zero(3), f"run_dir={killed}", init, *steps, "optim.batch_size=2", "save_steps=5"]
    process = subprocess.Popen([sys.executable, "-m", "vlmtune.cli", "sft", *sharded], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while latest_complete_checkpoint(killed / "trainer") is None and process.poll() is None:
        assert time.monotonic() < deadline, "no step checkpoint appeared"
        time.sleep(0.05)
    # SIGKILL to vlmtune, accelerate's launcher and both ranks (torchrun starts the ranks in sessions of their own).
    for member in [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]:
        member.kill()
    process.wait()
    assert not (killed / "checkpoint").exists(), "the run must have been killed before it finished"
    resumed_from = latest_complete_checkpoint(killed / "trainer")
    assert any(resumed_from.glob("global_step*/*optim_states.pt")), "ZeRO-3 step checkpoints hold optimizer shards"

    output = vlmtune("sft", *sharded)
    assert f"resuming from {resumed_from}" in output
    expected = load_file(one / "checkpoint" / "model.safetensors")
    got = load_file(killed / "checkpoint" / "model.safetensors")
    _assert_same_weights(expected, got)
    base = load_file(pipeline["pretrain"] / "checkpoint" / "model.safetensors")
    assert any(not torch.equal(got[k], base[k]) for k in base), "the weights must have trained"

    from transformers import LlavaForConditionalGeneration

    # The final checkpoint holds the gathered weights, not ZeRO-3's empty partitions: plain transformers loads what
    # one process trained.
    loaded = LlavaForConditionalGeneration.from_pretrained(killed / "checkpoint").state_dict()
    _assert_same_weights(LlavaForConditionalGeneration.from_pretrained(one / "checkpoint").state_dict(), loaded)


def test_zero2_lora_sft_equals_one_rank(pipeline):
    run_dir = pipeline["runs"] / "lora-zero2"
    vlmtune("sft", *_zero(2), f"run_dir={run_dir}", f"init_from={pipeline['pretrain'] / 'checkpoint'}", *QUIET,
            *FAST, "optim.batch_size=2")
    name = "checkpoint/adapter_model.safetensors"
    expected, got = load_file(pipeline["sft"] / name), load_file(run_dir / name)  # pipeline sft: 1 rank, batch 4
    assert any(expected[k].abs().max() > 0 for k in expected if ".lora_B." in k), "the adapter must have trained"
    _assert_same_weights(expected, got)


def test_zero3_pretrain_and_dpo_equal_one_rank(pipeline):
    pretrain = pipeline["runs"] / "pretrain-zero3"
    vlmtune("pretrain", *_zero(3), f"run_dir={pretrain}", *QUIET, *FAST, "optim.batch_size=2")
    name = "checkpoint/model.safetensors"
    _assert_same_weights(load_file(pipeline["pretrain"] / name), load_file(pretrain / name))  # pipeline: 1 rank

    init = f"init_from={pipeline['sft'] / 'checkpoint'}"
    steps = ["optim.max_steps=3", "logger=none", "eval.batch_size=16"]
    one, two = pipeline["runs"] / "dpo-1rank-z", pipeline["runs"] / "dpo-zero3"
    vlmtune("dpo", f"run_dir={one}", init, *steps, "optim.batch_size=4")
    vlmtune("dpo", *_zero(3), f"run_dir={two}", init, *steps, "optim.batch_size=2")
    name = "checkpoint/adapter_model.safetensors"
    expected = load_file(one / name)
    assert any(expected[k].abs().max() > 0 for k in expected if ".lora_B." in k), "the adapter must have trained"
    _assert_same_weights(expected, load_file(two / name))
