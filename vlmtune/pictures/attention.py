"""Where a vision tower looks: the last layer's attention over the patch grid, drawn over each image.

With a CLS token the map is what CLS attends to (what a CLIP-style pooled embedding reads); without one (SigLIP) it
is the attention each patch receives, averaged over all queries. Heads are averaged.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vlmtune.errors import ConfigError
from vlmtune.pictures import figure, save


@torch.no_grad()
def attention_maps(tower, pixel_values: torch.Tensor) -> torch.Tensor:
    """(images, rows, cols) attention over the patch grid from the tower's last layer; the tower must have been
    loaded with `attn_implementation="eager"` (SDPA kernels return no weights): see `load_tower_for_attention`."""
    output = tower(pixel_values=pixel_values.to(tower.dtype), output_attentions=True)
    if not output.attentions:
        raise ConfigError(f"{type(tower).__name__} returns no attention weights (a CNN has none to draw)")
    weights = output.attentions[-1].float().mean(dim=1)  # (images, queries, keys), heads averaged
    patch = tower.config.patch_size
    rows, cols = pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch
    prefix = weights.shape[-1] - rows * cols  # CLS and register tokens come first
    received = weights[:, 0, prefix:] if prefix else weights.mean(dim=1)
    received = received / received.sum(dim=-1, keepdim=True)
    return received.reshape(-1, rows, cols)


def vision_attention(tower_path: str | Path, images: list, path: str | Path, title: str = "") -> Path:
    """Each image of a vision checkpoint's view above its attention map (upsampled, over a faded copy of it)."""
    import numpy as np
    from transformers import AutoImageProcessor

    from vlmtune.model.compose import load_vision_tower

    tower = load_vision_tower(str(tower_path), torch.float32, attn_implementation="eager")
    image_processor = AutoImageProcessor.from_pretrained(tower_path)
    pixels = image_processor(images, return_tensors="pt")["pixel_values"]
    maps = attention_maps(tower, pixels)
    fig = figure(2.2 * len(images), 4.6)
    for i, (image, grid) in enumerate(zip(images, maps, strict=True)):
        top = fig.add_subplot(2, len(images), i + 1)
        top.imshow(image)
        top.axis("off")
        bottom = fig.add_subplot(2, len(images), len(images) + i + 1)
        bottom.imshow(np.asarray(image.convert("L")), cmap="gray", alpha=0.5)
        width, height = image.size
        bottom.imshow(grid.numpy(), cmap="inferno", alpha=0.6, extent=(0, width, height, 0), interpolation="nearest")
        bottom.axis("off")
    fig.suptitle(title or f"{type(tower).__name__}: last-layer attention over the {maps.shape[1]}x{maps.shape[2]} "
                 "patches", fontsize=9)
    save(fig, path)
    return Path(path)
