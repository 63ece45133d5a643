"""Which vision weights reach the features the projector reads.

A Llava-family model reads `config.vision_feature_layer`: the hidden states of one layer (or several), not the
encoder's output. Every layer after it, and heads and final norms that only shape the encoder's own output (SigLIP's
pooling head, CLIP's post-layernorm), can never change what the language model sees: LoRA on them or a full
fine-tune of them trains nothing and costs memory (and, under DDP, a search for unused parameters). One backward pass
of a blank image through the tower finds them exactly, for any encoder, without per-architecture layer names.
Idefics3 and Qwen2-VL read the tower's last output, so everything in their towers is used.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger("vlmtune")


def unused_vision_parameters(model, vision_path: str) -> set[str]:
    """Names (relative to the tower at `vision_path`) of the tower's parameters that do not reach the selected
    feature layer(s); empty for models that read the tower's last output."""
    layers = getattr(model.config, "vision_feature_layer", None)
    if layers is None:
        return set()
    layers = [layers] if isinstance(layers, int) else list(layers)
    tower = model.get_submodule(vision_path)
    vision_config = model.config.vision_config
    named = [(name, param) for name, param in tower.named_parameters() if param.is_floating_point()]
    first = named[0][1]
    size = vision_config.image_size
    pixels = torch.zeros(1, vision_config.num_channels, size, size, dtype=first.dtype, device=first.device)
    was_trainable = {name: param.requires_grad for name, param in named}
    try:
        for _, param in named:
            param.requires_grad_(True)
        with torch.enable_grad():
            hidden = tower(pixel_values=pixels, output_hidden_states=True).hidden_states
            selected = sum(hidden[layer].float().sum() for layer in layers)
            grads = torch.autograd.grad(selected, [param for _, param in named], allow_unused=True)
    finally:
        for name, param in named:
            param.requires_grad_(was_trainable[name])
    return {name for (name, _), grad in zip(named, grads, strict=True) if grad is None}

