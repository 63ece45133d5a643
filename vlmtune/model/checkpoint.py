"""Checkpoint directories: standard HF layout in, standard HF layout out, written atomically.

A checkpoint directory holds config.json + safetensors (or a PEFT adapter), the processor with its chat template,
a model card (README.md) and `vlmtune.json`: the resolved config, git sha and library versions that produced it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from vlmtune.errors import CheckpointError, require

PROVENANCE = "vlmtune.json"
ADAPTER_CONFIG = "adapter_config.json"


def git_sha() -> str | None:
    """The commit of the vlmtune source tree, or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    names = ["vlmtune", "torch", "transformers", "peft", "trl", "accelerate", "datasets", "bitsandbytes"]
    versions = {}
    for name in names:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    return versions


def write_atomically(out_dir: Path, write: Callable[[Path], None]) -> Path:
    """Let `write` fill a temporary sibling directory, then swap it into place.

    A kill mid-write leaves the previous `out_dir` (or nothing), never a half-written checkpoint that loads wrongly.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        write(tmp)
        old = None
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out_dir


def _model_card(model, provenance: dict[str, Any]) -> str:
    config = model.config if not hasattr(model, "peft_config") else model.get_base_model().config
    cfg = provenance.get("config", {})
    parts = cfg.get("model", {})
    lines = [
        "---",
        "library_name: transformers",
        "tags: [vlmtune, vision-language]",
        "---",
        f"# {provenance.get('recipe', 'vlmtune')} checkpoint",
        "",
        f"- model type: `{config.model_type}`",
        *([f"- started from: `{parts['path']}` (template `{parts.get('template')}`)"] if parts.get("path") else []),
        f"- vision encoder: `{parts.get('vision', {}).get('path', 'from init_from')}`",
        f"- language model: `{parts.get('llm', {}).get('path', 'from init_from')}`",
        f"- projector: `{parts.get('projector', {}).get('name', 'mlp2x_gelu')}`",
        f"- image tokens per image: {getattr(config, 'image_seq_length', 'n/a')}",
        f"- initialised from: `{cfg.get('init_from') or 'composed parts'}`",
        f"- training data: `{cfg.get('data', {}).get('train', 'n/a')}`",
        f"- git sha: `{provenance.get('git_sha')}`",
        "",
        "Load with `AutoModelForImageTextToText.from_pretrained(dir)` and `AutoProcessor.from_pretrained(dir)`"
        + (" (a PEFT adapter: `PeftModel.from_pretrained` on its base)." if hasattr(model, "peft_config") else "."),
    ]
    if config.model_type == "vlmtune":
        lines.append("Run `import vlmtune; vlmtune.register_auto_classes()` first: it registers the `vlmtune` model "
                     "type with the Auto classes (`pip install vlmtune`; no `trust_remote_code`).")
    return "\n".join(lines + _evaluation_lines(provenance.get("evaluation"))) + "\n"


def _evaluation_lines(results: dict[str, Any] | None) -> list[str]:
    """The card's evaluation section from an evaluate run's results.json (export results=...)."""
    if not results:
        return []
    generation = results.get("generation", {})
    lines = ["", "## Evaluation", "",
             f"Task `{results.get('task', 'n/a')}`, checkpoint evaluated: `{results.get('checkpoint')}`, greedy "
             f"decoding (max_new_tokens {generation.get('max_new_tokens')}), {results.get('num_processes')} "
             f"process(es), quantization: {results.get('quantization') or 'none'}.", "",
             "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
              for k, v in results.get("metrics", {}).items()]
    return lines


def save_checkpoint(model, processor, out_dir: Path, provenance: dict[str, Any],
                    state_dict: dict[str, Any] | None = None) -> Path:
    """Write model (or adapter), processor, model card and provenance to `out_dir` atomically. `state_dict`: the
    weights to write instead of the model's own (gathered from FSDP2 shards: vlmtune.train.sharded)."""

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        processor.save_pretrained(tmp)
        write_card_and_provenance(model, tmp, provenance)

    return write_atomically(Path(out_dir), write)


def write_card_and_provenance(model, out_dir: Path, provenance: dict[str, Any]) -> None:
    """The model card (README.md) and vlmtune.json (config, quantization, git sha, library versions) of a
    checkpoint."""
    from vlmtune.quantize import quantization_summary

    # An adapter records how its base was loaded while it trained (QLoRA: the LLM in 4-bit).
    config = model.get_base_model().config if hasattr(model, "peft_config") else model.config
    full = {**provenance, "quantization": quantization_summary(config), "git_sha": git_sha(),
            "versions": library_versions()}
    (out_dir / PROVENANCE).write_text(json.dumps(full, indent=2, default=str))
    (out_dir / "README.md").write_text(_model_card(model, full))


def is_adapter(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).exists()


def part_adapters(path: str | Path) -> list[str]:
    """Names of the further adapters an adapter directory holds (peft saves adapter "x" in its x/ folder)."""
    return sorted(sub.name for sub in Path(path).iterdir() if (sub / ADAPTER_CONFIG).exists())


def _require_dir(path: str | Path, what: str) -> None:
    p = Path(path)
    if not p.is_dir():
        raise CheckpointError(f"{what}: {path} is not a directory. Give a checkpoint directory written by a recipe.")
    if not (p / "config.json").exists() and not (p / ADAPTER_CONFIG).exists():
        raise CheckpointError(f"{what}: {path} holds neither config.json nor {ADAPTER_CONFIG}; not a checkpoint.")


def _looks_local(path: str | Path) -> bool:
    return Path(str(path)).exists() or str(path).startswith((".", "/"))


def load_vlm(
    path: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    quantization_config=None,
    device: str | torch.device | None = None,
    what: str = "checkpoint",
):
    """Load (model, processor) from a full checkpoint or a LoRA adapter directory (merged into its base).

    Adapters are merged into a full-precision base even when they were trained against a quantized one (the QLoRA
    convention); `quantization_config` then applies to the merged weights only through a full checkpoint. A
    checkpoint saved quantized (the quantize recipe's int8/, nf4/) loads quantized from its own config.json.
    `device` places the model: a full checkpoint is loaded straight onto it (bitsandbytes weights are quantized
    for, and stay on, the device they were loaded to), a merged adapter is moved there.
    """
    from vlmtune import register_auto_classes
    from vlmtune.compat import allow_missing_video_processor

    register_auto_classes()  # `vlmtune` checkpoints load through the Auto classes too
    allow_missing_video_processor()  # Qwen2-VL's processor without torchvision
    if _looks_local(path):
        _require_dir(path, what)
    with _unreadable_as_checkpoint_error(path, what):
        return _load(path, dtype, quantization_config, device, what)


@contextmanager
def _unreadable_as_checkpoint_error(path, what: str):
    """Weights or processor files that cannot be read (cut short, corrupt) are a CheckpointError naming them."""
    from safetensors import SafetensorError

    try:
        yield
    except (OSError, SafetensorError) as err:
        raise CheckpointError(f"{what}: cannot read {path} ({type(err).__name__}: {err}); its files are incomplete "
                              "or corrupt (a copy or a write cut short?): write it again or give another") from err


def _load(path, dtype, quantization_config, device, what: str):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vlmtune.quant.saved import backend_of, quant_method

    processor = AutoProcessor.from_pretrained(path)
    if is_adapter(path):
        from peft import PeftModel

        base = json.loads((Path(path) / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]
        if _looks_local(base):  # a hub id (an adapter on model.path=<hub id>) loads from the hub cache
            _require_dir(base, f"{what} (base of the adapter in {path})")
        model = AutoModelForImageTextToText.from_pretrained(base, dtype=dtype)
        model = PeftModel.from_pretrained(model, path)
        for name in part_adapters(path):  # a vision adapter of its own (vlmtune.train.policy: parts differing in DoRA)
            model.load_adapter(Path(path) / name, name)
        model = model.merge_and_unload(adapter_names=list(model.peft_config))
        if device is not None:
            model.to(device)
    elif quant_method(path) == "quanto":  # quanto's own serialization (transformers cannot save a quanto model)
        from vlmtune.quant.saved import load_quanto

        model = load_quanto(Path(path), dtype)
        if device is not None:
            model.to(device)
    else:
        if (backend := backend_of(path)) is not None:  # torchao / auto-round weights need their package
            require(*backend, f"the quantized checkpoint {path}")
        kwargs = {} if device is None else {"device_map": {"": device}}
        # Only pass a quantization_config that is set: an explicit None makes transformers drop the one saved in
        # config.json, and int8 / nf4 weights then load as plain floats without their scales (garbage outputs).
        if quantization_config is not None:
            kwargs["quantization_config"] = quantization_config
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, **kwargs)
    model.eval()
    return model, processor
