"""`vlmtune demo`: the whole path offline on a CPU, as a user would type it, then one results table.

tiny parts + synthetic data -> pretrain -> sft (+ the same sft on blanked images: the blind baseline)
-> evaluate -> quantize. Each stage is a separate `vlmtune <recipe>` process writing its own run directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

# The demo's experiment settings; everything else is the recipes' defaults.
DEMO = ["logger=none"]
SFT = ["peft=none", "optim.epochs=8", "optim.lr=8e-4", "evaluate_at_end=false", "logging_steps=250"]


def _vlmtune(*args: str) -> None:
    print(f"\n$ vlmtune {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "vlmtune.cli", *args], check=True)


def _side_by_side(*jobs: list[str], log_dir: Path) -> None:
    """Run independent `vlmtune` jobs at once, one thread each: tiny models are bound by per-op overhead, so two
    single-threaded processes finish sooner than the same jobs one after the other on two threads."""
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    running = []
    for i, args in enumerate(jobs):
        log = log_dir / f"job{i}.log"
        print(f"\n$ vlmtune {' '.join(args)}    (side by side, output in {log})", flush=True)
        with open(log, "w") as out:
            running.append((args, log, subprocess.Popen([sys.executable, "-m", "vlmtune.cli", *args], env=env,
                                                         stdout=out, stderr=subprocess.STDOUT)))
    for args, log, process in running:
        if process.wait() != 0:
            raise SystemExit(f"vlmtune {' '.join(args)} failed; its output is in {log}")


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def main(runs: Path | None = None) -> None:
    started = time.perf_counter()
    runs = runs or Path("runs") / "demo" / time.strftime("%Y%m%d-%H%M%S")
    _vlmtune("tiny")
    _vlmtune("synth")
    _vlmtune("pretrain", f"run_dir={runs / 'pretrain'}", "optim.max_steps=100", *DEMO)
    init = f"init_from={runs / 'pretrain' / 'checkpoint'}"
    _side_by_side(
        ["sft", f"run_dir={runs / 'sft'}", init, *SFT, *DEMO],
        ["sft", f"run_dir={runs / 'sft-blind'}", init, "data.blank_images=true", *SFT, *DEMO],
        log_dir=runs / "logs",
    )
    _side_by_side(
        ["evaluate", f"run_dir={runs / 'eval'}", f"checkpoint={runs / 'sft' / 'checkpoint'}", *DEMO],
        ["evaluate", f"run_dir={runs / 'eval-blind'}", f"checkpoint={runs / 'sft-blind' / 'checkpoint'}",
         "data.blank_images=true", *DEMO],
        log_dir=runs / "logs-eval",
    )
    _vlmtune("quantize", f"run_dir={runs / 'quantize'}", f"checkpoint={runs / 'sft' / 'checkpoint'}", *DEMO)

    trained, blind = _metrics(runs / "eval"), _metrics(runs / "eval-blind")
    kinds = [k for k in trained if k.startswith("accuracy/")]
    print(f"\nResults on {trained['n']} held-out questions (runs in {runs}):\n")
    print(f"| {'model':<32} | {'accuracy':>8} | " + " | ".join(k.removeprefix("accuracy/") for k in kinds) + " |")
    print(f"|{'-' * 34}|{'-' * 10}|" + "|".join("-" * (len(k) - 7) for k in kinds) + "|")
    for name, m in [("blind baseline (blank images)", blind), ("trained (pretrain -> sft)", trained)]:
        cells = " | ".join(f"{m[k]:>{len(k) - 9}.3f}" for k in kinds)
        print(f"| {name:<32} | {m['accuracy']:>8.3f} | {cells} |")
    print("\n" + (runs / "quantize" / "quantize.md").read_text())
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s")
