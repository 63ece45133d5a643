"""One command for a machine with a GPU: the FSDP2 launcher profile end to end on tiny parts, and the memory
preflight against CUDA's own peak counter. Without a GPU it runs its smoke mode: what a CPU allows (the refusal,
the single-process reference runs, the estimate against the CPU allocator) and says what it skipped.

    .venv/bin/python scripts/gpu_check.py --out gpu_check    # writes gpu_check/report.json, exits 1 on a failure

On a GPU (one process, launcher=fsdp2 launcher.num_processes=1: FSDP2's wrapping, sharded step checkpoints, the
gathered final checkpoint and resume all run with one rank):
  1. full fine-tune under FSDP2 ends with the weights of the single-process run (atol 1e-4);
  2. its step checkpoint is FSDP's sharded format, its final checkpoint a plain `llava` that transformers loads;
  3. resumed from the step-2 checkpoint it ends where the uninterrupted FSDP2 run ended (atol 1e-5);
  4. LoRA and QLoRA (4-bit weights stored in bf16, the compute dtype) train and save under FSDP2;
  5. the preflight estimate bounds torch.cuda.max_memory_allocated of a training step of the tiny model.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STEPS = ["optim.max_steps=6", "optim.batch_size=4", "logging_steps=1", "logger=none", "evaluate_at_end=false",
         "optim.precision=fp32"]


def vlmtune(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "vlmtune.cli", *args], cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"vlmtune {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n"
                           f"{proc.stderr[-5000:]}")
    return proc.stdout + proc.stderr


def max_difference(a: Path, b: Path, name: str) -> float:
    from safetensors.torch import load_file

    first, second = load_file(a / name), load_file(b / name)
    assert first.keys() == second.keys(), f"{a} and {b} hold different tensors"
    return max(float((first[k].float() - second[k].float()).abs().max()) for k in first)


def check_fsdp2(runs: Path, init: str) -> dict:
    single, fsdp, resumed = runs / "single", runs / "fsdp2", runs / "fsdp2-resumed"
    fsdp2 = ["launcher=fsdp2", "launcher.num_processes=1"]
    vlmtune("sft", f"run_dir={single}", init, "peft=none", *STEPS)
    output = vlmtune("sft", f"run_dir={fsdp}", init, "peft=none", *STEPS, *fsdp2, "save_steps=2")
    result = {"full_vs_single_max_diff": max_difference(single / "checkpoint", fsdp / "checkpoint",
                                                        "model.safetensors")}
    assert result["full_vs_single_max_diff"] <= 1e-4, result
    step = fsdp / "trainer" / "checkpoint-2"
    result["step_checkpoint_files"] = sorted(p.name for p in step.iterdir())
    assert any("fsdp" in p.name for p in step.iterdir()), f"no FSDP sharded state in {step}"
    from transformers import LlavaForConditionalGeneration

    LlavaForConditionalGeneration.from_pretrained(fsdp / "checkpoint")
    shutil.copytree(step, resumed / "trainer" / "checkpoint-2")
    output = vlmtune("sft", f"run_dir={resumed}", init, "peft=none", *STEPS, *fsdp2, "save_steps=2")
    assert "resuming from" in output
    result["resumed_vs_straight_max_diff"] = max_difference(fsdp / "checkpoint", resumed / "checkpoint",
                                                            "model.safetensors")
    assert result["resumed_vs_straight_max_diff"] <= 1e-5, result
    for peft, extra in (("lora", []), ("qlora", ["peft.compute_dtype=bfloat16", "optim.precision=bf16"])):
        run = runs / f"fsdp2-{peft}"
        vlmtune("sft", f"run_dir={run}", init, f"peft={peft}", *[s for s in STEPS if "precision" not in s], *extra,
                *fsdp2)
        result[f"{peft}_adapter"] = (run / "checkpoint" / "adapter_model.safetensors").exists()
        assert result[f"{peft}_adapter"], f"no adapter written under FSDP2 {peft}"
    return result


def check_memory(device: str) -> dict:
    """The preflight estimate against the allocator's peak for one steady-state step of the tiny model."""
    import torch
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from vlmtune.hydra_setup import setup
    from vlmtune.memory import estimate, pixel_shape
    from vlmtune.model.compose import compose as compose_model
    from vlmtune.train.policy import apply_policy

    setup()
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = OmegaConf.to_object(compose("sft", overrides=["run_dir=unused", "peft=none", "optim.batch_size=8"]))
    model, processor = compose_model(cfg.model)
    model = apply_policy(model, cfg.policy, cfg.peft).train()
    length = 120
    memory = estimate(model, cfg, length=length, pixel_shape=pixel_shape(processor.image_processor))
    model.to(device)
    size = processor.image_processor.size
    ids = torch.full((8, length), 5, device=device)
    ids[:, : model.config.image_seq_length] = model.config.image_token_index
    batch = {"input_ids": ids, "labels": ids, "pixel_values": torch.rand(8, 3, size["height"], size["width"],
                                                                          device=device)}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    for _ in range(2):  # the second step holds optimizer states: the steady state
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    result = {"estimate_bytes": memory.total}
    if device == "cuda":
        result["measured_peak_bytes"] = torch.cuda.max_memory_allocated()
        result["ratio"] = memory.total / result["measured_peak_bytes"]
        assert 1.0 <= result["ratio"] <= 1.5, result
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu_check", help="folder for report.json")
    args = parser.parse_args()
    import torch

    gpu = torch.cuda.is_available()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"gpu": torch.cuda.get_device_name(0) if gpu else None, "mode": "gpu" if gpu else "smoke",
                    "torch": torch.__version__, "checks": {}, "skipped": []}
    cache = Path(tempfile.mkdtemp(prefix="vlmtune-gpu-check-"))
    os.environ.update(VLMTUNE_CACHE=str(cache), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled")
    failed = False

    def run(name: str, check) -> None:
        nonlocal failed
        try:
            report["checks"][name] = {"ok": True, **(check() or {})}
        except Exception as error:  # noqa: BLE001 - every check reports, the script fails at the end
            failed = True
            report["checks"][name] = {"ok": False, "error": f"{error}", "traceback": traceback.format_exc()[-4000:]}

    runs = cache / "runs"
    run("setup", lambda: {"tiny": vlmtune("tiny")[-200:], "synth": vlmtune("synth", "--n-train", "64", "--n-test",
                                                                            "11")[-200:]})
    run("pretrain", lambda: {"out": vlmtune("pretrain", f"run_dir={runs / 'pretrain'}", *STEPS)[-300:]})
    init = f"init_from={runs / 'pretrain' / 'checkpoint'}"
    if gpu:
        run("fsdp2", lambda: check_fsdp2(runs, init))
        run("memory_cuda", lambda: check_memory("cuda"))
    else:
        def refused() -> dict:
            proc = subprocess.run([sys.executable, "-m", "vlmtune.cli", "sft", "launcher=fsdp2", init,
                                   f"run_dir={runs / 'refused'}", "logger=none"], cwd=REPO, capture_output=True,
                                  text=True)
            assert proc.returncode != 0 and "needs GPUs" in proc.stdout + proc.stderr, proc.stderr[-2000:]
            return {"refused": True}

        run("fsdp2_refused_on_cpu", refused)
        run("single_process_reference", lambda: {"out": vlmtune("sft", f"run_dir={runs / 'single'}", init,
                                                                "peft=none", *STEPS)[-300:]})
        run("memory_cpu", lambda: check_memory("cpu"))
        report["skipped"] = ["fsdp2 training, sharded checkpoint, resume, LoRA/QLoRA under FSDP2 (need a GPU)",
                             "estimate vs torch.cuda.max_memory_allocated (needs a GPU)"]
    (out / "report.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({k: {"ok": v["ok"], **({"error": v["error"][:300]} if not v["ok"] else {})}
                      for k, v in report["checks"].items()}, indent=1))
    print(f"mode {report['mode']}; report: {out / 'report.json'}; skipped: {report['skipped']}")
    shutil.rmtree(cache, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
