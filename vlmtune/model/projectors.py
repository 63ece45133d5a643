"""Projectors: what maps vision features into the LLM's embedding space, keyed exactly like conf/model/projector."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from vlmtune.registry import Registry

# Each builder takes the composed LlavaConfig and returns a module mapping (batch, tokens, vision_dim) features to
# (batch, tokens', llm_dim) embeddings.
PROJECTORS: Registry[Callable[..., nn.Module]] = Registry("model.projector.name")


@PROJECTORS.register("mlp2x_gelu")
def mlp2x_gelu(config) -> nn.Module:
    """LLaVA-1.5's two-layer GELU MLP: transformers' own module, so the checkpoint stays a plain `llava` one."""
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    return LlavaMultiModalProjector(config)
