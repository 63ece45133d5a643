"""Dual encoders: a CLIP / SigLIP checkpoint as it is, or any vision tower + any text encoder with new projection
heads (transformers' VisionTextDualEncoderModel); what trains in each tower; saving the pair and its vision tower.

All three classes (CLIPModel, SiglipModel, VisionTextDualEncoderModel) answer `get_image_features` /
`get_text_features` with the projected embeddings and hold a learned `logit_scale` (SigLIP also `logit_bias`), so
the loss, the retrieval metrics and `vlmtune embed` treat them alike. The vision tower is also written on its own as
an ordinary HF vision checkpoint (config, safetensors, image processor), which `model/vision` picks by path.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vlmtune.errors import CheckpointError, ConfigError
from vlmtune.model.checkpoint import PROVENANCE, git_sha, library_versions, write_atomically

if TYPE_CHECKING:
    from vlmtune.config import DualEncoderConfig, DualPolicyConfig, PeftConfig

CONTRASTIVE = "contrastive.json"  # beside a dual encoder: its loss and, for SigLIP on a pair without one, its bias
MODES = ("frozen", "full", "lora")
LORA_MODULES = r"(q_proj|k_proj|v_proj|out_proj|query|key|value)"  # attention projections of ViT/CLIP/SigLIP/BERT


@dataclass
class DualProcessor:
    """Images -> pixel values, captions -> token ids, as the dual encoder was trained (SigLIP pads to max_length)."""

    image_processor: Any
    tokenizer: Any
    max_length: int = 64  # captions are cut to this many tokens
    padding: str = "longest"  # longest | max_length (SigLIP's text tower was trained on padded rows)

    def images(self, images: list) -> torch.Tensor:
        return self.image_processor(images, return_tensors="pt")["pixel_values"]

    def texts(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return dict(self.tokenizer(list(texts), padding=self.padding, truncation=True, max_length=self.max_length,
                                   return_tensors="pt"))

    def save_pretrained(self, out_dir: Path) -> None:
        self.image_processor.save_pretrained(out_dir)
        self.tokenizer.save_pretrained(out_dir)


def _text_padding(config) -> tuple[str, int]:
    text = getattr(config, "text_config", config)
    length = min(int(getattr(text, "max_position_embeddings", 64) or 64), 64)
    return ("max_length" if config.model_type == "siglip" else "longest"), length


DUAL_TYPES = ("clip", "siglip", "vision-text-dual-encoder")


def is_dual_encoder(path: str | Path) -> bool:
    """Whether a checkpoint (directory or hub id) holds a dual encoder (both towers), not a VLM or a lone tower."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(path)).model_type in DUAL_TYPES


def load_dual(path: str | Path, what: str = "model.path"):
    """(dual encoder, processor) from a CLIP / SigLIP checkpoint or one a `contrastive` run wrote."""
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    if str(path).startswith((".", "/")) and not Path(path).is_dir():
        raise CheckpointError(f"{what}={path} is not a directory; give a dual encoder checkpoint (CLIP, SigLIP or a "
                                "`vlmtune contrastive` run's checkpoint/)")
    model = AutoModel.from_pretrained(path)
    if not all(hasattr(model, name) for name in ("get_image_features", "get_text_features", "logit_scale")):
        raise CheckpointError(f"{what}={path} is a {type(model).__name__}, not a dual encoder (CLIP, SigLIP or a "
                         "vision-text dual encoder); for a vision tower alone set model.vision.path")
    padding, length = _text_padding(model.config)
    processor = DualProcessor(AutoImageProcessor.from_pretrained(path), AutoTokenizer.from_pretrained(path),
                              max_length=length, padding=padding)
    bias = _saved_bias(path)
    return model, processor, bias


def _saved_bias(path: str | Path) -> float | None:
    saved = Path(path) / CONTRASTIVE
    return json.loads(saved.read_text()).get("logit_bias") if saved.exists() else None


def compose_dual(cfg: DualEncoderConfig, loss: str):
    """A new dual encoder: the vision tower `cfg.vision.path` and the text encoder `cfg.text.path` with new
    projection heads into a `cfg.projection_dim`-wide space. Its temperature starts where the loss's paper starts it
    (CLIP 1/0.07, SigLIP 10)."""
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer, VisionTextDualEncoderModel

    from vlmtune.model.compose import _require_local, load_vision_tower

    _require_local(cfg.vision.path, "model.vision.path")
    _require_local(cfg.text.path, "model.text.path")
    dtype = getattr(torch, cfg.dtype)
    vision = load_vision_tower(cfg.vision.path, dtype)  # the vision half of a CLIP/SigLIP checkpoint, if it is one
    text = AutoModel.from_pretrained(cfg.text.path, dtype=dtype)
    if getattr(text.config, "model_type", "") in ("clip", "siglip"):  # a whole dual encoder: take its text half
        text = text.text_model
    model = VisionTextDualEncoderModel(vision_model=vision, text_model=text)
    model.config.projection_dim = cfg.projection_dim
    model.visual_projection = torch.nn.Linear(model.vision_embed_dim, cfg.projection_dim, bias=False, dtype=dtype)
    model.text_projection = torch.nn.Linear(model.text_embed_dim, cfg.projection_dim, bias=False, dtype=dtype)
    torch.nn.init.normal_(model.visual_projection.weight, std=model.vision_embed_dim ** -0.5)
    torch.nn.init.normal_(model.text_projection.weight, std=model.text_embed_dim ** -0.5)
    scale = math.log(10.0) if loss == "siglip" else math.log(1 / 0.07)
    model.config.logit_scale_init_value = scale
    with torch.no_grad():
        model.logit_scale.fill_(scale)
    processor = DualProcessor(AutoImageProcessor.from_pretrained(cfg.vision.path),
                              AutoTokenizer.from_pretrained(cfg.text.path), max_length=cfg.text.max_length)
    return model, processor


def vision_tower(dual):
    """The dual encoder's vision tower: a stand-alone vision model (CLIPVisionModel, SiglipVisionModel, ...)."""
    return dual.vision_model


def apply_dual_policy(dual, policy: DualPolicyConfig, peft: PeftConfig):
    """Freeze, fully train or LoRA-adapt each tower (`policy.vision` / `policy.text`); the projection heads, the
    temperature and the bias always train. Returns the model to train (a PeftModel when a tower is in lora mode)."""
    from vlmtune.train.policy import lora_settings

    modes = {part: getattr(policy, part).mode for part in ("vision", "text")}
    for part, mode in modes.items():
        if mode not in MODES:
            raise ConfigError(f"policy.{part}.mode={mode!r}: expected one of {', '.join(MODES)}")
    lora_parts = [part for part, mode in modes.items() if mode == "lora"]
    if lora_parts:
        from peft import LoraConfig, get_peft_model

        settings = {part: lora_settings(getattr(policy, part), peft) for part in lora_parts}
        if len(set(settings.values())) > 1:
            raise ConfigError("policy.vision and policy.text use different LoRA settings; a dual encoder takes one "
                             "adapter: give both the same lora_r / lora_alpha / lora_dropout / use_rslora / use_dora")
        lora = settings[lora_parts[0]]
        towers = "|".join(f"{part}_model" for part in lora_parts)
        dual = get_peft_model(dual, LoraConfig(
            r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, use_rslora=lora.rslora, use_dora=lora.dora,
            target_modules=rf"^({towers})\..*\.{LORA_MODULES}$"))
    for name, param in dual.named_parameters():
        part = tower_of(name)
        if part is None:  # projection heads, temperature, bias
            param.requires_grad = True
        elif modes[part] != "lora":
            param.requires_grad = modes[part] == "full"
    return dual


def merged(dual):
    """The plain dual encoder: LoRA adapters (if any) merged into the towers."""
    return dual.merge_and_unload() if hasattr(dual, "merge_and_unload") else dual


def tower_of(name: str) -> str | None:
    """vision / text for a tower's parameter (PEFT prefixes names with base_model.model.), None for the rest."""
    name = name.removeprefix("base_model.model.")
    for part in ("vision", "text"):
        if name.startswith(f"{part}_model."):
            return part
    return None


def parameter_table(model) -> str:
    """Parameters and trainable parameters per tower, the heads and the total: printed at the start of a run."""
    from collections import Counter

    total, trainable = Counter(), Counter()
    for name, param in model.named_parameters():
        part = tower_of(name) or "heads"
        total[part] += param.numel()
        trainable[part] += param.numel() if param.requires_grad else 0
    rows = [f"{'part':<8} {'parameters':>12} {'trainable':>12}"]
    rows += [f"{part:<8} {total[part]:>12,} {trainable[part]:>12,}" for part in ("vision", "text", "heads")]
    rows.append(f"{'total':<8} {sum(total.values()):>12,} {sum(trainable.values()):>12,}")
    return "\n".join(rows)


def save_dual(dual, processor: DualProcessor, out_dir: Path, provenance: dict[str, Any], loss: str,
              bias: float | None) -> Path:
    """The dual encoder (adapters merged first: `merged`) with its processor, loss and bias, written atomically."""

    def write(tmp: Path) -> None:
        dual.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        own_bias = getattr(dual, "logit_bias", None)
        (tmp / CONTRASTIVE).write_text(json.dumps({
            "loss": loss, "logit_scale": dual.logit_scale.exp().reshape(-1)[0].item(),
            "logit_bias": own_bias.reshape(-1)[0].item() if own_bias is not None else bias}, indent=1))
        (tmp / PROVENANCE).write_text(json.dumps({**provenance, "git_sha": git_sha(), "versions": library_versions()},
                                                 indent=2, default=str))

    return write_atomically(Path(out_dir), write)


def save_vision_tower(dual, processor: DualProcessor, out_dir: Path, provenance: dict[str, Any]) -> Path:
    """The vision tower alone as an ordinary HF vision checkpoint: `model.vision.path=<out_dir>` composes it."""
    tower = vision_tower(dual)

    def write(tmp: Path) -> None:
        tower.save_pretrained(tmp, safe_serialization=True)
        processor.image_processor.save_pretrained(tmp)
        (tmp / PROVENANCE).write_text(json.dumps({**provenance, "git_sha": git_sha(), "versions": library_versions()},
                                                 indent=2, default=str))

    return write_atomically(Path(out_dir), write)
