"""`make bench`: vlmtune's `sft` against the plain TRL + transformers path, side by side, on the same samples.

Writes the workload (vlmtune/bench/workload.py: a random VLM with real proportions, LLaVA-style conversations), then
trains it for whole epochs with the TRL baseline (vlmtune/bench/baseline.py), with vlmtune's defaults and with each
option, every run in its own process (vlmtune/bench/run.py). Repeats are interleaved, and each repeat runs the
configurations in a rotated order, so that load from other processes falls on all of them alike. Prints a markdown
table of medians with their spread (min-max) and writes it with the raw runs to `<out>/bench.md` / `bench.json`.

    python -m vlmtune.bench [--size cpu|smoke] [--repeats 3] [--only NAME ...] [--out bench-results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

# name -> sft overrides ("trl" is the baseline). Each option is measured against vlmtune's defaults.
CONFIGS: dict[str, list[str]] = {
    "trl": [],
    "vlmtune": [],
    "vlmtune data.group_by_length=true": ["data.group_by_length=true"],
    "vlmtune optim.microbatch_by_length=false": ["optim.microbatch_by_length=false"],
    "vlmtune optim.supervised_head=false": ["optim.supervised_head=false"],
    "vlmtune data.packing=true": ["data.packing=true"],
    "vlmtune, none of its speed-ups": ["optim.supervised_head=false", "optim.microbatch_by_length=false"],
    # Gains from the second epoch on: measured with --epochs 2 (`make bench` runs one).
    "vlmtune vision_feature_cache": ["vision_feature_cache=features"],
}
DEFAULT = [name for name in CONFIGS if name != "vlmtune vision_feature_cache"]
SETTINGS = {"cpu": dict(batch_size=8, epochs=1, lr=2e-4), "smoke": dict(batch_size=4, epochs=1, lr=2e-4)}


def write_workload(name: str, workdir: Path, settings: dict, samples: int | None = None, device: str = "cpu") -> dict:
    """Write workload `name` (vlmtune/bench/workload.py) under `workdir` with the run `settings`; returns them all."""
    from dataclasses import asdict, replace

    from vlmtune.bench.workload import WORKLOADS, write_data, write_model

    work = WORKLOADS[name] if samples is None else replace(WORKLOADS[name], samples=samples)
    workdir.mkdir(parents=True, exist_ok=True)
    write_model(work, workdir, device)
    write_data(work, workdir / "data")
    settings = {"workload": name, **asdict(work), **settings}
    (workdir / "settings.json").write_text(json.dumps(settings, indent=1))
    return settings


def run_once(workdir: Path, name: str, overrides: list[str], result: Path) -> dict:
    """One configuration's run in a process of its own (vlmtune/bench/run.py), with the load around it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "WANDB_MODE": "disabled"}
    load = os.getloadavg()[0]
    proc = subprocess.run([sys.executable, "-m", "vlmtune.bench.run", str(workdir), name, str(result), *overrides],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"bench run {name!r} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    measured = json.loads(result.read_text())
    return {**measured, "load_before": load, "load_after": os.getloadavg()[0]}


def derived(run: dict) -> dict:
    return {"supervised_tokens_per_s": run["supervised"] / run["seconds"],
            "samples_per_s": run["samples"] / run["seconds"], "padding": 1 - run["tokens"] / run["slots"]}


def summarize(runs: dict[str, list[dict]]) -> dict[str, dict]:
    """Per configuration: medians and (min, max) of each figure; speed ratios to the baseline paired by repeat."""
    summary = {}
    baseline = [derived(r)["supervised_tokens_per_s"] for r in runs["trl"]] if "trl" in runs else None
    baseline_cpu = [{"cpu_seconds": r["cpu_seconds"]} for r in runs.get("trl", [])]
    for name, measured in runs.items():
        figures = [derived(r) | {"peak_rss_mb": r["peak_rss_mb"], "seconds": r["seconds"],
                                 "cpu_seconds": r["cpu_seconds"]} for r in measured]
        row = {key: {"median": statistics.median(f[key] for f in figures),
                     "min": min(f[key] for f in figures), "max": max(f[key] for f in figures)}
               for key in figures[0]}
        if baseline:
            ratios = [f["supervised_tokens_per_s"] / b for f, b in zip(figures, baseline, strict=True)]
            row["vs_trl"] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
            work = [b["cpu_seconds"] / f["cpu_seconds"] for f, b in zip(figures, baseline_cpu, strict=True)]
            row["cpu_vs_trl"] = {"median": statistics.median(work), "min": min(work), "max": max(work)}
        row["supervised_tokens"] = measured[0]["supervised"]
        row["samples"] = measured[0]["samples"]
        summary[name] = row
    return summary


def markdown(summary: dict[str, dict], settings: dict, conditions: dict) -> str:
    def cell(figure: dict, fmt: str) -> str:
        return f"{figure['median']:{fmt}} ({figure['min']:{fmt}}-{figure['max']:{fmt}})"

    lines = [f"vlmtune bench, `{settings['workload']}`: {settings['samples']} conversations x {settings['epochs']} "
             f"epochs, batch {settings['batch_size']}, LoRA r=16 + projector, fp32; {conditions['repeats']} "
             f"interleaved repeats, median (min-max). {conditions['machine']}; load average "
             f"{conditions['load_min']:.1f}-{conditions['load_max']:.1f} during the runs.", "",
             "| configuration | supervised tokens/s | vs TRL | samples/s | padding | peak RSS MB | train s | CPU s "
             "| CPU time vs TRL |", "|---|---|---|---|---|---|---|---|---|"]
    for name, row in summary.items():
        ratio = cell(row["vs_trl"], ".2f") + "x" if "vs_trl" in row else "-"
        work = cell(row["cpu_vs_trl"], ".2f") + "x" if "cpu_vs_trl" in row else "-"
        lines.append(f"| {name} | {cell(row['supervised_tokens_per_s'], '.0f')} | {ratio} | "
                     f"{cell(row['samples_per_s'], '.2f')} | {row['padding']['median']:.0%} | "
                     f"{cell(row['peak_rss_mb'], '.0f')} | {cell(row['seconds'], '.0f')} | "
                     f"{cell(row['cpu_seconds'], '.0f')} | {work} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m vlmtune.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SETTINGS), default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", nargs="+", choices=list(CONFIGS), help="run only these configurations")
    parser.add_argument("--samples", type=int, help="conversations per epoch (default: the size's)")
    parser.add_argument("--epochs", type=float, help="epochs (default: the size's)")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args(argv)
    import torch

    names = args.only or DEFAULT
    workdir = args.out / f"workload-{args.size}"
    settings = write_workload(args.size, workdir, {**SETTINGS[args.size], **(
        {"epochs": args.epochs} if args.epochs else {})}, args.samples)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for repeat in range(args.repeats):
        for name in names[repeat % len(names):] + names[: repeat % len(names)]:  # rotated: no fixed position
            started = time.time()
            runs[name].append(run_once(workdir, name, CONFIGS[name], workdir / "result.json"))
            print(f"repeat {repeat + 1}/{args.repeats} {name}: {runs[name][-1]['seconds']:.1f} s in the loop "
                  f"({time.time() - started:.0f} s with start-up)", flush=True)
    loads = [r[key] for measured in runs.values() for r in measured for key in ("load_before", "load_after")]
    conditions = {"repeats": args.repeats, "load_min": min(loads), "load_max": max(loads),
                  "machine": f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
                             f"torch {torch.__version__}, {torch.get_num_threads()} threads"}
    summary = summarize(runs)
    table = markdown(summary, settings, conditions)
    print("\n" + table)
    report = {"settings": settings, "conditions": conditions, "summary": summary, "runs": runs}
    (args.out / "bench.json").write_text(json.dumps(report, indent=1))
    (args.out / "bench.md").write_text(table)
    return report


if __name__ == "__main__":
    main()
