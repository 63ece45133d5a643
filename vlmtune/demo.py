"""`vlmtune demo`: the whole path offline on a CPU, as a user would type it, then one results table.

tiny parts + synthetic data -> pretrain -> sft (+ the same sft on blanked images: the blind baseline)
-> evaluate -> quantize. Each stage is a separate `vlmtune <recipe>` process writing its own run directory.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

# The demo's experiment settings; everything else is the recipes' defaults.
DEMO = ["logger=none"]
SFT = ["peft=none", "optim.epochs=5", "optim.lr=1e-3", "evaluate_at_end=false", "logging_steps=250"]


def _vlmtune(*args: str) -> None:
    command = [sys.executable, "-m", "vlmtune.cli", *args]
    print(f"\n$ vlmtune {' '.join(args)}", flush=True)
    subprocess.run(command, check=True)


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def main(runs: Path | None = None) -> None:
    started = time.perf_counter()
    runs = runs or Path("runs") / "demo" / time.strftime("%Y%m%d-%H%M%S")
    _vlmtune("tiny")
    _vlmtune("synth")
    _vlmtune("pretrain", f"run_dir={runs / 'pretrain'}", "optim.max_steps=100", *DEMO)
    init = f"init_from={runs / 'pretrain' / 'checkpoint'}"
    _vlmtune("sft", f"run_dir={runs / 'sft'}", init, *SFT, *DEMO)
    _vlmtune("sft", f"run_dir={runs / 'sft-blind'}", init, "data.blank_images=true", *SFT, *DEMO)
    _vlmtune("evaluate", f"run_dir={runs / 'eval'}", f"checkpoint={runs / 'sft' / 'checkpoint'}", *DEMO)
    _vlmtune("evaluate", f"run_dir={runs / 'eval-blind'}", f"checkpoint={runs / 'sft-blind' / 'checkpoint'}",
             "data.blank_images=true", *DEMO)
    _vlmtune("quantize", f"run_dir={runs / 'quantize'}", f"checkpoint={runs / 'sft' / 'checkpoint'}", *DEMO)

    trained, blind = _metrics(runs / "eval"), _metrics(runs / "eval-blind")
    kinds = [k for k in trained if k.startswith("accuracy/")]
    print(f"\nResults on {trained['n']} held-out questions (runs in {runs}):\n")
    print(f"| {'model':<32} | {'accuracy':>8} | " + " | ".join(k.removeprefix("accuracy/") for k in kinds) + " |")
    print(f"|{'-' * 34}|{'-' * 10}|" + "|".join("-" * (len(k) - 7) for k in kinds) + "|")
    for name, m in [("blind baseline (blank images)", blind), ("trained (pretrain -> sft)", trained)]:
        cells = " | ".join(f"{m[k]:>{len(k) - 9}.3f}" for k in kinds)
        print(f"| {name:<32} | {m['accuracy']:>8.3f} | {cells} |")
    print("\n| variant | checkpoint MB | memory MB | accuracy |\n|---|---|---|---|")
    for row in json.loads((runs / "quantize" / "quantize.json").read_text()):
        print(f"| {row['variant']} | {row['checkpoint_bytes'] / 2**20:.2f} | {row['memory_bytes'] / 2**20:.2f} "
              f"| {row['accuracy']:.3f} |")
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s")
