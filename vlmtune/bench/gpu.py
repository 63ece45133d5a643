"""`make bench-gpu`: vlmtune against TRL + transformers at real model sizes, on one GPU, as one command.

Random weights from real configs, nothing downloaded (vlmtune/bench/workload.py): SigLIP-so400m at 384 px (729
image tokens) + Qwen2.5-0.5B for a bf16 full fine-tune (projector + LLM) and for LoRA, and + Qwen2.5-7B for QLoRA
(nf4, gradient checkpointing). For each, the TRL baseline (vlmtune/bench/baseline.py) and vlmtune's `sft`
defaults train the same conversations for one epoch, each in its own process (vlmtune/bench/run.py), and the
table gives supervised tokens/s, the ratio, peak GPU memory and MFU:

    MFU = (6 N T + 12 L H sum(len^2) + 2 N_vision T_image) / seconds / peak bf16 FLOP/s

with N the LLM's weights (LM head included, input embeddings not), T the real tokens trained, L / H the LLM's layers
and width, len each sample's length (attention, non-causal convention), N_vision the frozen tower's weights and
T_image the image tokens it encodes (forward only). The same model FLOPs count for both paths, so work one path
skips (padding, unsupervised positions of the head) raises its MFU. The GPU's peak comes from its name
(`--peak-tflops` to give it). `--smoke` runs the same script end to end on a CPU with tiny models of the same
architectures (fp32), so it is known to work before a GPU is at hand.

    python -m vlmtune.bench.gpu [--smoke] [--only full lora qlora] [--repeats 1] [--also data.packing=true ...]
                                [--out bench-gpu-results]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from vlmtune.bench.__main__ import run_once, write_workload

# mode -> workload, trainable parts and batch size. QLoRA checkpoints the LLM's activations (both paths) to fit 7B
# + SigLIP in ~10 GB.
MODES = {
    "full": dict(workload="gpu-0.5b", method="full", batch_size=8, gradient_checkpointing=False),
    "lora": dict(workload="gpu-0.5b", method="lora", batch_size=8, gradient_checkpointing=False),
    "qlora": dict(workload="gpu-7b", method="qlora", batch_size=4, gradient_checkpointing=True),
}
# Dense bf16 tensor-core peaks (vendor datasheets, SXM parts), TFLOP/s, matched in the device's name.
PEAK_TFLOPS = {"H200": 989, "H100": 989, "A100": 312, "L40S": 362, "L4": 121, "A10G": 70, "RTX 4090": 165}


def peak_flops(device_name: str, given: float | None) -> float | None:
    if given:
        return given * 1e12
    return next((tflops * 1e12 for key, tflops in PEAK_TFLOPS.items() if key in device_name), None)


def model_flops(base: Path, counts: dict, image_tokens: int) -> float:
    """The training FLOPs of the run's tokens (see the module's docstring), from the checkpoint's architecture."""
    import torch
    from transformers import AutoConfig, LlavaForConditionalGeneration

    config = AutoConfig.from_pretrained(base)
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    llm = model.model.language_model
    embedding = llm.get_input_embeddings().weight.numel()
    weights = sum(p.numel() for p in llm.parameters()) - embedding + model.lm_head.weight.numel()
    vision = sum(p.numel() for p in model.model.vision_tower.parameters())
    text = config.text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    attention = 12 * text.num_hidden_layers * text.num_attention_heads * head_dim * counts["squared_lengths"]
    return 6 * weights * counts["tokens"] + attention + 2 * vision * image_tokens * counts["samples"]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m vlmtune.bench.gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU: the script end to end")
    parser.add_argument("--only", nargs="+", choices=list(MODES), help="run only these modes")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak (default: from its name)")
    parser.add_argument("--also", nargs="+", default=[], metavar="OVERRIDE",
                        help="also measure vlmtune with each of these sft overrides, e.g. data.packing=true")
    parser.add_argument("--out", type=Path, default=Path("bench-gpu-results"))
    args = parser.parse_args(argv)
    import torch

    on_gpu = torch.cuda.is_available()
    if not on_gpu and not args.smoke:
        parser.error("no CUDA GPU here: run on a GPU machine, or with --smoke (tiny models, CPU)")
    device = torch.cuda.get_device_name() if on_gpu else "CPU"
    peak = peak_flops(device, args.peak_tflops) if on_gpu else None
    results, written = {}, {}
    for mode in args.only or list(MODES):
        workload = "gpu-smoke" if args.smoke else MODES[mode]["workload"]
        workdir = args.out / f"{workload}-{mode}"
        settings = {**{k: v for k, v in MODES[mode].items() if k != "workload"}, "epochs": 1, "lr": 2e-4,
                    "bf16": on_gpu}
        if workload not in written:  # a workload's model and data are written once, for every mode that uses it
            written[workload] = write_workload(workload, args.out / workload, settings, device="cuda" if on_gpu
                                               else "cpu")
        workdir.mkdir(parents=True, exist_ok=True)
        for item in ("base", "data"):
            if not (workdir / item).exists():
                (workdir / item).symlink_to((args.out / workload / item).resolve())
        (workdir / "settings.json").write_text(json.dumps({**written[workload], **settings}, indent=1))
        vision = written[workload]["vision_config"]
        image_tokens = (vision["image_size"] // vision["patch_size"]) ** 2
        paths = {"trl": [], "vlmtune": [], **{f"vlmtune {override}": [override] for override in args.also}}
        for repeat in range(args.repeats):
            for path in (list(paths) if repeat % 2 == 0 else list(reversed(paths))):
                measured = run_once(workdir, path, paths[path], workdir / "result.json")
                flops = model_flops(workdir / "base", measured, image_tokens)
                measured |= {"tokens_per_s": measured["supervised"] / measured["seconds"],
                             "mfu": flops / measured["seconds"] / peak if peak else None}
                results.setdefault(mode, {}).setdefault(path, []).append(measured)
                print(f"{mode} {path}: {measured['seconds']:.1f} s, {measured['tokens_per_s']:.0f} supervised "
                      f"tokens/s", flush=True)
    table = markdown(results, device, args.smoke)
    print("\n" + table)
    report = {"device": device, "peak_flops": peak, "smoke": args.smoke, "results": results}
    (args.out / "bench-gpu.json").write_text(json.dumps(report, indent=1))
    (args.out / "bench-gpu.md").write_text(table)
    return report


def markdown(results: dict, device: str, smoke: bool) -> str:
    lines = [f"vlmtune bench-gpu on {device}{' (smoke: tiny models, figures meaningless)' if smoke else ''}; "
             "median of repeats", "",
             "| mode | path | supervised tokens/s | vs TRL | MFU | peak GPU GB | padding |",
             "|---|---|---|---|---|---|---|"]
    for mode, paths in results.items():
        baseline = statistics.median(r["tokens_per_s"] for r in paths["trl"])
        for path, runs in paths.items():
            speed = statistics.median(r["tokens_per_s"] for r in runs)
            mfu = [r["mfu"] for r in runs if r["mfu"] is not None]
            memory = [r["peak_gpu_mb"] for r in runs if r["peak_gpu_mb"] is not None]
            padding = statistics.median(1 - r["tokens"] / r["slots"] for r in runs)
            lines.append(f"| {mode} | {path} | {speed:.0f} | {speed / baseline:.2f}x | "
                         f"{f'{statistics.median(mfu):.1%}' if mfu else '-'} | "
                         f"{f'{statistics.median(memory) / 1024:.1f}' if memory else '-'} | {padding:.0%} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
