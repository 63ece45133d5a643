"""Real sizes before any download: a conf entry's model built on the meta device from its published architecture.

Every hub checkpoint that a conf entry names has its architecture kept in vlmtune/model/architectures/<hub id>/:
the values of its `config.json` that decide the shapes (the vision half for CLIP/SigLIP checkpoints), and the image
processor settings that decide the image size. `vlmtune describe` composes the model from them on the meta device
(shapes and dtypes, no memory, no weights, offline): parameters per part and image tokens per image are the real
ones, e.g. LLaVA-1.5-7B's 7,063,427,072 parameters and 576 image tokens. A local directory is read as it is.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from vlmtune.errors import ConfigError

ARCHITECTURES = Path(__file__).parent / "architectures"


def is_local(path: str | None) -> bool:
    return path is not None and Path(path).expanduser().is_dir()


def architecture_dir(path: str, key: str) -> str:
    """`path` when it is a local directory, else the architecture kept for the hub id `path`."""
    if is_local(path):
        return str(Path(path).expanduser())
    kept = ARCHITECTURES / path
    if not (kept / "config.json").is_file():
        known = sorted(str(p.parent.relative_to(ARCHITECTURES)) for p in ARCHITECTURES.rglob("config.json"))
        raise ConfigError(f"{key}={path}: not a local directory, and vlmtune keeps no architecture for that hub "
                                f"id (kept: {', '.join(known)}). Download the checkpoint (or just its config.json and "
                                "preprocessor_config.json) and give its directory.")
    return str(kept)


def needs_meta(model_cfg) -> bool:
    """True when a part (or the VLM) named by `model_cfg` is a hub id, not a local directory."""
    paths = [model_cfg.path] if model_cfg.path else [model_cfg.vision.path, model_cfg.llm.path]
    return not all(is_local(p) for p in paths)


def image_tokens(config) -> int | str:
    """Image tokens per image that a VLM config implies, or how they vary."""
    if getattr(config, "image_seq_length", None) and config.model_type != "llava_next":
        return config.image_seq_length
    kind = config.model_type
    if kind == "llava_next":
        return f"{config.image_seq_length} per 336 px tile (any-resolution: a base image plus up to 4 tiles)"
    if kind == "paligemma":
        return config.vision_config.num_image_tokens
    if kind == "idefics3":
        vision = config.vision_config
        per_tile = (vision.image_size // vision.patch_size) ** 2 // config.scale_factor**2
        return f"{per_tile} per {vision.image_size} px tile (plus one tile per split of a large image)"
    if kind in ("qwen2_vl", "qwen2_5_vl"):
        merge = config.vision_config.spatial_merge_size * config.vision_config.patch_size
        return f"dynamic: one per {merge}x{merge} px of the image"
    return "n/a"


def image_processor_at(where: str):
    """The image processor kept beside an architecture (None when there is none: no activations to count)."""
    from transformers import AutoImageProcessor

    if not (Path(where) / "preprocessor_config.json").is_file():
        return None
    return AutoImageProcessor.from_pretrained(where)


def meta_model(model_cfg):
    """(model on the meta device, where its architecture came from) for a conf `model` entry."""
    if model_cfg.path:
        from transformers import AutoConfig, AutoModelForImageTextToText

        where = architecture_dir(model_cfg.path, "model.path")
        config = AutoConfig.from_pretrained(where)
        with torch.device("meta"):
            model = AutoModelForImageTextToText.from_config(config, dtype=getattr(torch, model_cfg.dtype))
        return model, [where]
    from vlmtune.model.compose import compose

    vision = architecture_dir(model_cfg.vision.path, "model.vision.path")
    llm = architecture_dir(model_cfg.llm.path, "model.llm.path")
    local_cfg = replace(model_cfg, vision=replace(model_cfg.vision, path=vision), llm=replace(model_cfg.llm, path=llm))
    model, _ = compose(local_cfg, meta=True)
    return model, [vision, llm]
