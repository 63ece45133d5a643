"""Weights & Biases: offline by default without an API key, grouped by Hydra sweep, main process only."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vlmtune.config import LoggerConfig


def _sweep_identity() -> tuple[str | None, str | None]:
    """(group, name) of this job inside a Hydra multirun, or (None, None) in a single run."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
    except (ImportError, ValueError):
        return None, None
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None, None
    group = Path(hydra_cfg.sweep.dir).name
    name = hydra_cfg.job.override_dirname or str(hydra_cfg.job.num)
    return group, f"{group}/{name}"


def start(cfg: LoggerConfig, run_dir: Path, job_type: str, config: dict[str, Any]):
    """Start a W&B run writing under `run_dir`, or return None when `logger.backend=none`."""
    if cfg.backend == "none":
        os.environ["WANDB_MODE"] = "disabled"  # so the HF Trainer's W&B callback stays quiet too
        return None
    import wandb

    mode = cfg.mode or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
    os.environ["WANDB_MODE"] = mode
    os.environ["WANDB_DIR"] = str(run_dir)
    group, name = _sweep_identity()
    return wandb.init(
        project=cfg.project,
        entity=cfg.entity,
        dir=str(run_dir),
        mode=mode,
        job_type=job_type,
        group=group,
        name=name,
        tags=[job_type, *cfg.tags] + ([f"sweep:{group}"] if group else []),
        config=config,
        reinit="finish_previous",  # a multirun job starts a fresh run after the previous job's
    )


def samples_table(rows: list[dict[str, Any]], limit: int):
    """A W&B table of evaluation samples with their images."""
    import wandb

    from vlmtune.data.images import load_image

    table = wandb.Table(columns=["id", "image", "prompt", "prediction", "target", "correct"])
    for row in rows[:limit]:
        # Benchmark images may be paths, bytes or PIL images; targets may be lists of reference answers.
        images = [wandb.Image(load_image(image, f"sample {row['id']!r}")) for image in row.get("images", [])]
        target = row["target"] if isinstance(row["target"], str) else " | ".join(map(str, row["target"]))
        table.add_data(row["id"], images[0] if images else None, row["prompt"], row["prediction"], target,
                       row["score"])
    return table


# --- What a run is made of: code, data, parameters, machine (main process only; the caller checks). -----------------


def git_state(path: Path | None = None) -> dict[str, Any]:
    """{"sha", "dirty"} of the git checkout holding vlmtune (or `path`); {} outside a checkout or without git."""
    import subprocess

    where = Path(path) if path else Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return {}
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"sha": sha.stdout.strip(), "dirty": bool(status.stdout.strip())}


def data_fingerprint(records: list[dict[str, Any]]) -> str:
    """sha256 (first 16 hex digits) of the training samples as selected: ids, messages, kinds and their images.

    Images are hashed by content when held in memory (bytes, PIL) and by path and byte size when on disk: reading
    every image of a large set would cost minutes for an identifier.
    """
    import hashlib
    import json

    digest = hashlib.sha256()
    for record in records:
        digest.update(json.dumps({k: record.get(k) for k in ("id", "messages", "kind")}, sort_keys=True,
                                 default=str).encode())
        for image in record.get("images") or []:
            digest.update(_image_identity(image))
    return digest.hexdigest()[:16]


def _image_identity(image: Any) -> bytes:
    if isinstance(image, dict):  # datasets' Image(decode=False): {"bytes", "path"}
        image = image.get("bytes") or image.get("path")
    if isinstance(image, bytes | bytearray):
        return bytes(image)
    if isinstance(image, str | Path):
        try:
            size = Path(image).stat().st_size
        except OSError:
            size = -1
        return f"{image}:{size}".encode()
    if hasattr(image, "tobytes"):  # a PIL image
        return image.tobytes()
    return repr(image).encode()


def system_info(state=None) -> dict[str, Any]:
    """Library versions, device, process count, CPU and GPU names."""
    import platform

    import torch

    from vlmtune.model.checkpoint import library_versions

    info: dict[str, Any] = {f"version/{k}": v for k, v in library_versions().items()}
    info["version/python"] = platform.python_version()
    info["device"] = str(state.device) if state is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    info["num_processes"] = state.num_processes if state is not None else int(os.environ.get("WORLD_SIZE", "1"))
    info["cpu"] = _cpu_name()
    info["cpu_count"] = os.cpu_count()
    info["torch_threads"] = torch.get_num_threads()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
    else:
        info["gpu"], info["gpu_count"] = None, 0
    return info


def _cpu_name() -> str:
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def parse_parameter_table(text: str) -> tuple[list[str], list[list[Any]]]:
    """(columns, rows) of `vlmtune.train.policy.parameter_table`'s printed table; numbers lose their commas."""
    lines = [line.split() for line in text.splitlines() if line.strip()]
    columns, rows = lines[0], []
    for cells in lines[1:]:
        row = [cells[0], *(int(c.replace(",", "")) if c.replace(",", "").isdigit() else c for c in cells[1:])]
        rows.append(row + [""] * (len(columns) - len(row)))  # frozen parts have no rate, the total no mode
    return columns, rows


def log_run_facts(tracker, *, parameters: str | None = None, records: list[dict[str, Any]] | None = None,
                  state=None) -> dict[str, Any]:
    """Put git state, system info, the data fingerprint and the parameter table in the W&B summary (and config);
    returns what was recorded. `parameters` is `parameter_table(model)`'s text."""
    facts: dict[str, Any] = {}
    git = git_state()
    if git:
        facts["git/sha"], facts["git/dirty"] = git["sha"], git["dirty"]
    facts |= {f"system/{k}": v for k, v in system_info(state).items()}
    if records is not None:
        facts["data/train/fingerprint"] = data_fingerprint(records)
    if tracker is None:
        return facts
    import wandb

    if parameters:
        columns, rows = parse_parameter_table(parameters)
        tracker.log({"model/parameters": wandb.Table(columns=columns, data=rows)})
        for row in rows:  # e.g. params/llm/trainable
            facts |= {f"params/{row[0]}/{column}": value for column, value in zip(columns[1:], row[1:], strict=False)}
    tracker.summary.update(facts)
    tracker.config.update({"vlmtune": {k: v for k, v in facts.items() if not k.startswith("params/")}},
                          allow_val_change=True)
    return facts


def log_checkpoint(tracker, path: Path, *, kind: str, metadata: dict[str, Any] | None = None) -> None:
    """Log the checkpoint directory `path` as a W&B artifact of type "model" named `<kind>-<run id>`.

    The files are referenced in place (policy "immutable"), not copied to W&B's staging folder: a multi-GB
    checkpoint is not duplicated on disk. Offline, `wandb sync` uploads them later, so keep the directory until then.
    """
    import wandb

    artifact = wandb.Artifact(f"{kind}-{tracker.id}", type="model", metadata=metadata or {})
    artifact.add_dir(str(path), policy="immutable")
    tracker.log_artifact(artifact, aliases=["latest", "final"])


def generations_table(rows: list[dict[str, Any]], records: list[dict[str, Any]], step: int, limit: int):
    """A W&B table of probe generations at `step`: image, question, answer, prediction, correct."""
    import wandb

    from vlmtune.data.images import load_image

    questions = {r["id"]: _question(r) for r in records}
    table = wandb.Table(columns=["step", "id", "image", "question", "answer", "prediction", "correct"])
    for row in rows[:limit]:
        images = row.get("images") or []
        image = wandb.Image(load_image(images[0], where=str(row["id"]))) if images else None
        table.add_data(step, row["id"], image, questions.get(row["id"], ""), row["target"], row["prediction"],
                       bool(row.get("score", 0)))
    return table


def _question(record: dict[str, Any]) -> str:
    """The text of the last user turn before the answer (image placeholders left out)."""
    messages = record.get("messages") or []
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            return " ".join(part.get("text") or "" for part in content or [] if part.get("type") == "text").strip()
    return ""
