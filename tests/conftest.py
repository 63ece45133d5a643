"""Shared fixtures: tiny offline parts and a small synthetic dataset, written once per test session.

Every test runs offline (HF_HUB_OFFLINE=1) against a private cache directory, through the same `from_pretrained`
code that loads real hub checkpoints.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.pop("WANDB_API_KEY", None)  # tests never reach W&B servers


@pytest.fixture(scope="session")
def cache(tmp_path_factory) -> Path:
    """A VLMTUNE_CACHE holding the tiny parts and a small shapes dataset."""
    from vlmtune.data.shapes import write_shapes_dataset
    from vlmtune.tiny import IMAGE_SIZE, write_tiny_parts

    root = tmp_path_factory.mktemp("vlmtune-cache")
    os.environ["VLMTUNE_CACHE"] = str(root)
    write_tiny_parts(root / "tiny")
    write_shapes_dataset(root / "data" / "shapes", seed=0, n_train=64, n_test=11, image_size=IMAGE_SIZE)
    return root


@pytest.fixture(scope="session")
def tiny(cache) -> Path:
    return cache / "tiny"


@pytest.fixture(scope="session")
def shapes(cache) -> Path:
    return cache / "data" / "shapes"


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600) -> str:
    """Run a command (e.g. `vlmtune sft ...`) in a fresh process; fail with its output when it fails."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(list(args), cwd=cwd or REPO, env=full_env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc.stdout + proc.stderr


def vlmtune(*args: str, **kwargs) -> str:
    return run_cli(sys.executable, "-m", "vlmtune.cli", *args, **kwargs)


FAST = ["optim.max_steps=4", "optim.batch_size=4", "logging_steps=1", "eval.batch_size=4"]


@pytest.fixture(scope="module")
def one_thread():
    """The processes a module's tests start compute on one thread. On a loaded 2-core machine torch's two threads
    wait on each other: a tiny model's answer took 1.4 s with two and 28 ms with one (a quantize run: 56 s -> 21 s)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        yield


@pytest.fixture(scope="session")
def pipeline(cache, tmp_path_factory) -> dict[str, Path]:
    """pretrain -> sft (LoRA) with evaluation at the end, W&B offline, as a user would run them."""
    runs = tmp_path_factory.mktemp("runs")
    vlmtune("pretrain", f"run_dir={runs / 'pretrain'}", *FAST)
    vlmtune("sft", f"run_dir={runs / 'sft'}", f"init_from={runs / 'pretrain' / 'checkpoint'}", *FAST)
    return {"pretrain": runs / "pretrain", "sft": runs / "sft", "runs": runs}


# docs/roadmap.md: every `vlmtune` command of its ```bash blocks, run in order in a fast mode (these overrides per
# recipe, after the command's own: the last value wins), as a session fixture the road's tests read.
ROAD_FAST = {
    "contrastive": ["optim.max_steps=4", "optim.batch_size=8", "eval.batch_size=8", "logging_steps=1"],
    "pretrain": ["optim.max_steps=4", "optim.batch_size=4", "logging_steps=1"],
    "sft": ["optim.max_steps=4", "optim.batch_size=4", "eval.batch_size=8", "logging_steps=1"],
    "evaluate": ["eval.batch_size=8"],
    "quantize": ["eval.batch_size=8"],
}


def roadmap_commands() -> list[list[str]]:
    """The tour's commands as argument lists, continuation lines joined; setup (`vlmtune tiny`, `synth`) left out:
    the session cache holds both."""
    import re
    import shlex

    text = (REPO / "docs" / "roadmap.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("vlmtune ") and not re.match(r"vlmtune (tiny|synth)\b", line):
                commands.append(shlex.split(line)[1:])
    return commands


@pytest.fixture(scope="session")
def road(cache, tmp_path_factory) -> Path:
    """The tour's commands run as written, in one process (`vlmtune.cli.main`), from a fresh working directory."""
    from vlmtune.cli import main

    work, before = tmp_path_factory.mktemp("road"), Path.cwd()
    os.chdir(work)
    try:
        for argv in roadmap_commands():
            main([*argv, *ROAD_FAST.get(argv[0], []), "logger=none"])
    finally:
        os.chdir(before)
    return work / "runs" / "road"
