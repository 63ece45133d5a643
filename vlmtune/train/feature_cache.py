"""An on-disk cache of a frozen vision tower's hidden states: after the first epoch, training skips the encoder.

Projector alignment (stage 1) trains only the projector, so the vision tower computes the same features for the same
image every epoch. `cache_vision_features` replaces the tower's `forward` on this one instance (its weights and
state-dict names are untouched, so checkpoints are unchanged) with one that keys each image by a hash of its pixel
values, the tower's config and the requested layers, loads cached hidden states from safetensors files and runs the
tower only for images it has not seen. Only the layers the model reads are stored; the others are None in the
returned tuple. Refused for a vision tower that trains, because its features change every step.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from transformers.modeling_outputs import BaseModelOutput

from vlmtune.errors import PolicyError
from vlmtune.model.parts import parts_of


def _layers(config) -> list[int]:
    layer = config.vision_feature_layer
    return [layer] if isinstance(layer, int) else list(layer)


def cache_vision_features(model, cache_dir: str | Path) -> dict[str, int]:
    """Make `model`'s vision tower read and write hidden states under `cache_dir`; returns hit/miss counters."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    tower = base.get_submodule(parts_of(base)["vision"])
    if any(p.requires_grad for p in tower.parameters()):
        raise PolicyError("vision_feature_cache=<folder> needs a frozen vision tower (policy.vision.mode=frozen): "
                          "a training tower's features change every step")
    layers = _layers(base.config)
    signature = hashlib.sha256(f"{tower.config.to_json_string()}{layers}".encode()).hexdigest()[:16]
    cache = Path(cache_dir) / signature
    cache.mkdir(parents=True, exist_ok=True)
    original = tower.forward
    stats = {"hits": 0, "misses": 0}

    def key(pixels: torch.Tensor) -> Path:
        digest = hashlib.sha256(pixels.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()).hexdigest()
        return cache / f"{digest[:32]}.safetensors"

    def cached_forward(pixel_values: torch.Tensor, *args, **kwargs) -> BaseModelOutput:
        from safetensors import safe_open
        from safetensors.torch import load_file, save_file

        files = [key(image) for image in pixel_values]
        missing = [i for i, f in enumerate(files) if not f.exists()]
        stats["hits"] += len(files) - len(missing)
        stats["misses"] += len(missing)
        if missing:
            with torch.no_grad():
                hidden = original(pixel_values=pixel_values[missing], output_hidden_states=True).hidden_states
            for row, i in enumerate(missing):
                tmp = files[i].with_name(f".{files[i].name}.{os.getpid()}")  # ranks may write the same image
                save_file({str(layer): hidden[layer][row].contiguous() for layer in layers}, str(tmp),
                          metadata={"depth": str(len(hidden))})
                os.replace(tmp, files[i])
        loaded = [load_file(str(f), device=str(pixel_values.device)) for f in files]
        with safe_open(str(files[0]), "pt") as first:
            depth = int(first.metadata()["depth"])  # how many hidden states the tower returns
        states: list[torch.Tensor | None] = [None] * depth
        for layer in layers:
            states[layer] = torch.stack([item[str(layer)] for item in loaded]).to(pixel_values.dtype)
        return BaseModelOutput(last_hidden_state=states[-1], hidden_states=tuple(states))

    tower.forward = cached_forward
    return stats
