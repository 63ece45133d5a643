"""Which parameters train: frozen vision tower, projector trained fully, LLM adapted by LoRA / QLoRA / full tuning.

Module paths come from vlmtune.model.parts (per architecture: Llava's `model.vision_tower`,
`model.multi_modal_projector`, `model.language_model`; Idefics3's `model.vision_model`, `model.connector`,
`model.text_model`; Qwen2-VL's `model.visual`, `model.visual.merger`, `model.language_model`) and `lm_head`.
"""

from __future__ import annotations

import re
from collections import Counter

import torch

from vlmtune.config import PeftConfig
from vlmtune.model.parts import PART_NAMES, parts_of
from vlmtune.model.parts import part_of as _part_of

LLM_PLACEHOLDER = "{llm}"  # in peft.target: the LLM's module path for the model's architecture


def part_of(name: str, parts: dict[str, str] | None = None) -> str:
    """Which part a parameter name belongs to (PEFT prefixes names with base_model.model.); Llava layout default."""
    return _part_of(name, parts or parts_of("llava"))


def parameter_table(model) -> str:
    """Parameters per part, trainable and frozen, as a printable table."""
    parts = parts_of(model)
    total, trainable = Counter(), Counter()
    for name, param in model.named_parameters():
        if ".original_module." in name:  # PEFT keeps the frozen original beside the trained copy (modules_to_save)
            continue
        part = part_of(name, parts)
        total[part] += param.numel()
        if param.requires_grad:
            trainable[part] += param.numel()
    rows = [f"{'part':<10} {'parameters':>12} {'trainable':>12}"]
    for part in [*PART_NAMES, "lm_head", "other"]:
        if total[part]:
            rows.append(f"{part:<10} {total[part]:>12,} {trainable[part]:>12,}")
    rows.append(f"{'total':<10} {sum(total.values()):>12,} {sum(trainable.values()):>12,}")
    return "\n".join(rows)


def freeze_all_but_projector(model) -> None:
    """Projector alignment (stage 1): only the projector learns."""
    parts = parts_of(model)
    for name, param in model.named_parameters():
        param.requires_grad = part_of(name, parts) == "projector"


def bnb_4bit_config(peft: PeftConfig, model_type: str = "llava"):
    """QLoRA's 4-bit LLM: vision tower, projector and lm_head stay in full precision."""
    from vlmtune.quantize import bnb_config

    return bnb_config(4, peft.quant_type, getattr(torch, peft.compute_dtype), peft.double_quant,
                      model_type=model_type)


def lora_target(target: str, parts: dict[str, str]) -> str:
    """peft.target with `{llm}` replaced by the architecture's LLM path (escaped for the regex)."""
    return target.replace(LLM_PLACEHOLDER, re.escape(parts["llm"]))


def apply_peft(model, peft: PeftConfig, train_projector: bool = True, train_vision: bool = False):
    """Set trainable parameters for instruction tuning and return the (possibly PEFT-wrapped) model."""
    if peft.method not in {"lora", "qlora", "none"}:
        raise ValueError(f"peft.method={peft.method!r} is not known; valid values: lora, none, qlora")
    if train_vision and peft.method != "none":
        raise ValueError("train_vision=true needs peft=none (a full fine-tune); LoRA adapts the LLM only")
    parts = parts_of(model)
    if peft.method == "none":
        trainable = {"llm", "lm_head"} | ({"projector"} if train_projector else set()) | (
            {"vision"} if train_vision else set())
        for name, param in model.named_parameters():
            param.requires_grad = part_of(name, parts) in trainable
        return model

    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if peft.method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    config = LoraConfig(
        r=peft.r,
        lora_alpha=peft.alpha,
        lora_dropout=peft.dropout,
        target_modules=lora_target(peft.target, parts),
        # The projector trains fully and is saved inside the adapter, so the adapter directory is self-contained.
        modules_to_save=[parts["projector"]] if train_projector else None,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, config)
    lora_parts = {part_of(n, parts) for n, _ in model.named_parameters() if "lora_" in n}
    if lora_parts != {"llm"}:
        raise ValueError(f"peft.target={peft.target!r} put LoRA on {sorted(lora_parts) or 'nothing'}; "
                         f"it must match modules of the LLM only ({parts['llm']}...; {LLM_PLACEHOLDER} stands for it)")
    return model
