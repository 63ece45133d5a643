"""What a saved quantized checkpoint is (its quantization method, the package it needs) and how quanto's own
serialization loads. No dependency on the rest of vlmtune.quant, so the loader (vlmtune.model.checkpoint) reads it
without importing the quantizers."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vlmtune.errors import CheckpointError, require

QUANTO_MAP = "quanto_qmap.json"  # marks a checkpoint saved with quanto's serialization


def load_quanto(path: Path, dtype: torch.dtype = torch.float32):
    """Rebuild the model from its config and load the quantized weights with `optimum.quanto.requantize`."""
    require("optimum.quanto", "quanto", f"the quanto checkpoint {path}")
    from optimum.quanto import requantize
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForImageTextToText, GenerationConfig

    # Built on the CPU, not on the meta device: non-persistent buffers (rotary frequencies) must be computed.
    model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(path), dtype=dtype)
    state = load_file(Path(path) / "model.safetensors")
    requantize(model, state, json.loads((Path(path) / QUANTO_MAP).read_text()), device=torch.device("cpu"))
    model.tie_weights()
    missing = sorted(set(model.state_dict()) - set(state))
    untied = [n for n in missing if not any(model.state_dict()[n].data_ptr() == t.data_ptr()
                                            for k, t in model.state_dict().items() if k in state)]
    if untied:  # quanto loads with strict=False: a weight it did not find would stay random
        raise CheckpointError(f"{path}: the quanto checkpoint lacks {len(untied)} weights, e.g. {untied[:3]}; "
                              "rewrite it with `vlmtune quantize`")
    if (Path(path) / "generation_config.json").exists():
        model.generation_config = GenerationConfig.from_pretrained(path)
    return model.eval()


def quant_method(path: str | Path) -> str | None:
    """How a saved checkpoint is quantized: its config's quant_method (bitsandbytes, torchao, auto-round, ...),
    "quanto" for quanto's serialization; None for full precision (or an adapter)."""
    path = Path(str(path))
    if (path / QUANTO_MAP).exists():
        return "quanto"
    config = path / "config.json"
    if not config.exists():
        return None
    return (json.loads(config.read_text()).get("quantization_config") or {}).get("quant_method")


def backend_of(path: str | Path) -> tuple[str, str] | None:
    """(module, extra) that a saved quantized checkpoint needs to load, or None (core dependencies suffice)."""
    return {"quanto": ("optimum.quanto", "quanto"), "torchao": ("torchao", "torchao"),
            "auto-round": ("auto_round", "autoround"), "auto_round": ("auto_round", "autoround"),
            "awq": ("auto_round", "autoround")}.get(quant_method(path))
