"""bitsandbytes 8-bit / 4-bit loading of a VLM checkpoint: only the LLM is quantized."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vlmtune.errors import ConfigError
from vlmtune.model.parts import skip_modules

# Vision tower, projector and lm_head stay in full precision: full module paths, because bitsandbytes matches
# skip names from the root or as a suffix and a bare "vision_tower" would quantize it anyway. Per architecture
# (vlmtune.model.parts): e.g. Idefics3 ["model.vision_model", "model.connector", "lm_head"], Qwen2-VL
# ["model.visual", "lm_head"] (its projector, model.visual.merger, is inside the vision part).
SKIP_MODULES = skip_modules("llava")


def bnb_config(bits: int, quant_type: str = "nf4", compute_dtype: torch.dtype = torch.float32,
               double_quant: bool = True, model_type: str = "llava", storage_dtype: torch.dtype | None = None):
    """bitsandbytes settings that quantize the LLM only (QLoRA training and the quantize recipe share them).

    `storage_dtype`: the dtype 4-bit weights are packed into (default uint8); FSDP shards them only when it is a
    float dtype, the compute dtype (FSDP-QLoRA)."""
    from transformers import BitsAndBytesConfig

    skip = skip_modules(model_type)
    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    if bits == 4:
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                                  bnb_4bit_use_double_quant=double_quant, bnb_4bit_compute_dtype=compute_dtype,
                                  llm_int8_skip_modules=skip, bnb_4bit_quant_storage=storage_dtype or torch.uint8)
    raise ConfigError(f"bits={bits} is not supported by bitsandbytes; valid values: 4, 8")


def checkpoint_bytes(path: Path) -> int:
    """Bytes of the weight files in a checkpoint directory."""
    return sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))


def quantization_summary(config) -> dict[str, Any] | None:
    """How a loaded model is quantized, read from its config (as saved in config.json); None for full precision.

    Results files record it so that a score from an int8 / nf4 checkpoint is never mistaken for a full-precision one.
    """
    raw = getattr(config, "quantization_config", None)
    if raw is None:
        return None
    raw = raw if isinstance(raw, dict) else raw.to_dict()
    method = getattr(raw.get("quant_method"), "value", raw.get("quant_method"))
    if method != "bitsandbytes":
        return {"method": str(method), "config": raw}
    four_bit = bool(raw.get("load_in_4bit"))
    summary = {"method": "bitsandbytes", "bits": 4 if four_bit else 8,
               "quant_type": raw.get("bnb_4bit_quant_type") if four_bit else "int8",
               "skip_modules": raw.get("llm_int8_skip_modules")}
    if four_bit:
        summary |= {"double_quant": raw.get("bnb_4bit_use_double_quant"),
                    "compute_dtype": str(raw.get("bnb_4bit_compute_dtype"))}
    return summary
