"""Read an offline W&B run back from its files: the records of its .wandb transaction log (`wandb leet inspect`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any


def offline_run(run_dir: Path) -> Path:
    """The one offline W&B run directory under <run_dir>/wandb."""
    runs = list((Path(run_dir) / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, f"expected one offline W&B run under {run_dir}, found {runs}"
    return runs[0]


def _inspect(path: Path, *flags: str) -> str:
    wandb = Path(sys.executable).parent / "wandb"
    proc = subprocess.run([str(wandb), "leet", "inspect", "--json", *flags, str(path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def records(run_dir: Path) -> list[dict[str, Any]]:
    """Every record of the run (run, config, history, summary, artifact, ...) as JSON objects."""
    return [json.loads(line) for line in _inspect(offline_run(run_dir)).splitlines() if line.strip()]


def summary(run_dir: Path) -> dict[str, Any]:
    """{"summary", "config", "tags", "name", ...}: the run's state as `wandb leet inspect --summary` gives it."""
    return json.loads(_inspect(offline_run(run_dir), "--summary"))


def run_record(run_dir: Path) -> dict[str, Any]:
    """The run's own record: group (`run_group`), name, tags, job type."""
    return next(r["run"] for r in records(run_dir) if r["type"] == "run")


def tables(run_dir: Path, key: str) -> list[dict[str, Any]]:
    """Every version of a logged W&B table `key` (e.g. "eval/generations"), in logging order, as its JSON file."""
    media = offline_run(run_dir) / "files" / "media" / "table"
    files = sorted(media.glob(f"{key}_*.table.json"), key=lambda p: int(p.name.removeprefix(
        Path(key).name + "_").split("_")[0]))
    return [json.loads(f.read_text()) for f in files]
