"""The projector zoo: what maps vision features into the LLM's embedding space, keyed exactly like conf/model/projector.

Every projector takes `(images, tokens, vision_dim)` features plus the encoder's patch grid and returns
`(images, image_tokens, llm_dim)` embeddings, and declares `image_tokens` up front through `output_tokens`: the
processor expands each `<image>` placeholder to exactly that count, so features and placeholders always match.

`mlp2x_gelu` is special: in a plain `llava` checkpoint it is transformers' own `LlavaMultiModalProjector`, so plain
transformers loads the model; every other projector makes the checkpoint the `vlmtune` model type (see modeling.py).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import nn

from vlmtune.config import ProjectorConfig
from vlmtune.errors import ConfigError
from vlmtune.registry import Registry

Grid = tuple[int, int]  # (rows, columns) of patch tokens


class Projector(nn.Module, ABC):
    """Base class: `config` is conf/model/projector/<name>.yaml as its typed ProjectorConfig."""

    needs_grid = False  # True when the projector merges neighbouring patches: tokens must form the patch grid

    def __init__(self, in_dim: int, out_dim: int, config: ProjectorConfig):
        super().__init__()
        self.config = config

    def output_tokens(self, num_tokens: int, grid: Grid) -> int:
        """Image tokens per image for `num_tokens` vision tokens laid out on `grid`."""
        return num_tokens

    @abstractmethod
    def forward(self, features: torch.Tensor, grid: Grid) -> torch.Tensor:
        """(images, tokens, vision_dim) features on `grid` -> (images, output_tokens, llm_dim) embeddings."""


PROJECTORS: Registry[type[Projector]] = Registry("model.projector.name")


def mlp(in_dim: int, out_dim: int, depth: int, activation: str) -> nn.Sequential:
    """`depth` linear layers with `activation` between them (depth 1 is a single linear map)."""
    from transformers.activations import ACT2FN

    if depth < 1:
        raise ConfigError(f"model.projector.depth must be at least 1, got {depth}")
    layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
    for _ in range(depth - 1):
        layers += [ACT2FN[activation], nn.Linear(out_dim, out_dim)]
    return nn.Sequential(*layers)


@PROJECTORS.register("linear")
class Linear(Projector):
    """One linear map per token (LLaVA-1.0)."""

    def __init__(self, in_dim: int, out_dim: int, config: ProjectorConfig):
        super().__init__(in_dim, out_dim, config)
        self.proj = nn.Linear(in_dim, out_dim)

    def forward(self, features: torch.Tensor, grid: Grid) -> torch.Tensor:
        return self.proj(features)


@PROJECTORS.register("mlp")
@PROJECTORS.register("mlp2x_gelu")  # LLaVA-1.5's MLP where the checkpoint cannot be a plain llava one
class MLP(Projector):
    """An MLP of `depth` layers per token; `mlp2x_gelu` is depth 2 with GELU."""

    def __init__(self, in_dim: int, out_dim: int, config: ProjectorConfig):
        super().__init__(in_dim, out_dim, config)
        self.mlp = mlp(in_dim, out_dim, config.depth, config.activation)

    def forward(self, features: torch.Tensor, grid: Grid) -> torch.Tensor:
        return self.mlp(features)


def _to_map(features: torch.Tensor, grid: Grid) -> torch.Tensor:
    """(images, rows * cols, dim) tokens -> (images, dim, rows, cols) map."""
    images, tokens, dim = features.shape
    if tokens != grid[0] * grid[1]:
        raise ConfigError(f"{tokens} vision tokens do not form the {grid[0]}x{grid[1]} patch grid this projector "
                          "merges: use model.vision.select_strategy=patches (or default) to drop CLS/register tokens")
    return features.transpose(1, 2).reshape(images, dim, *grid)


@PROJECTORS.register("pixel_shuffle")
class PixelShuffle(Projector):
    """Idefics3 / SmolVLM / InternVL: fold each `scale x scale` block of patches into one token (scale² fewer tokens,
    scale² times wider), then LayerNorm + MLP. A grid that `scale` does not divide is zero-padded at the bottom/right.
    """

    needs_grid = True

    def __init__(self, in_dim: int, out_dim: int, config: ProjectorConfig):
        super().__init__(in_dim, out_dim, config)
        self.scale = config.scale
        self.norm = nn.LayerNorm(in_dim * self.scale**2)
        self.mlp = mlp(in_dim * self.scale**2, out_dim, config.depth, config.activation)

    def output_tokens(self, num_tokens: int, grid: Grid) -> int:
        return math.ceil(grid[0] / self.scale) * math.ceil(grid[1] / self.scale)

    def forward(self, features: torch.Tensor, grid: Grid) -> torch.Tensor:
        s = self.scale
        feature_map = _to_map(features, grid)
        pad_rows, pad_cols = -grid[0] % s, -grid[1] % s
        feature_map = nn.functional.pad(feature_map, (0, pad_cols, 0, pad_rows))
        # (images, dim * s * s, rows / s, cols / s): each output position holds its s x s block of patches.
        folded = nn.functional.pixel_unshuffle(feature_map, s)
        return self.mlp(self.norm(folded.flatten(2).transpose(1, 2)))


@PROJECTORS.register("conv_downsampler")
class ConvDownsampler(Projector):
    """C-Abstractor / LDP style: residual depthwise-separable conv blocks keep locality, an adaptive average pool
    shrinks the grid `scale` times per side, an MLP maps to the LLM."""

    needs_grid = True

    def __init__(self, in_dim: int, out_dim: int, config: ProjectorConfig):
        super().__init__(in_dim, out_dim, config)
        self.scale = config.scale
        self.inp = nn.Linear(in_dim, out_dim)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(out_dim, out_dim, 3, padding=1, groups=out_dim),  # depthwise: mixes neighbours
                nn.Conv2d(out_dim, out_dim, 1),  # pointwise: mixes channels
                nn.GELU(),
            )
            for _ in range(config.num_layers)
        )
        self.out = mlp(out_dim, out_dim, 2, config.activation)

    def output_tokens(self, num_tokens: int, grid: Grid) -> int:
        return math.ceil(grid[0] / self.scale) * math.ceil(grid[1] / self.scale)

    def forward(self, features: torch.Tensor, grid: Grid) -> torch.Tensor:
        feature_map = _to_map(self.inp(features), grid)
        for block in self.blocks:
            feature_map = feature_map + block(feature_map)
        pooled = nn.functional.adaptive_avg_pool2d(
            feature_map, (math.ceil(grid[0] / self.scale), math.ceil(grid[1] / self.scale))
        )
        return self.out(pooled.flatten(2).transpose(1, 2))


class _AttentionBlock(nn.Module):
    """Pre-norm attention of `queries` over `context`, then a feed-forward layer; residual around both."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm_q, self.norm_kv, self.norm_ff = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        kv = self.norm_kv(context)
        queries = queries + self.attn(self.norm_q(queries), kv, kv, need_weights=False)[0]
        return queries + self.ff(self.norm_ff(queries))


class _QueryProjector(Projector):
    """Shared by the resampler and the Q-Former: `num_queries` learned queries read the image, whatever its size."""

    def __init__(self, in_dim: int, out_dim: int, config: ProjectorConfig):
        super().__init__(in_dim, out_dim, config)
        if out_dim % config.num_heads:
            raise ConfigError(f"model.projector.num_heads={config.num_heads} must divide the LLM hidden size "
                              f"{out_dim}")
        self.queries = nn.Parameter(torch.randn(config.num_queries, out_dim) * out_dim**-0.5)
        self.inp = nn.Linear(in_dim, out_dim)
        self.norm = nn.LayerNorm(out_dim)

    def output_tokens(self, num_tokens: int, grid: Grid) -> int:
        return self.config.num_queries


@PROJECTORS.register("resampler")
class PerceiverResampler(_QueryProjector):
    """Flamingo's perceiver resampler: latents cross-attend to the image features concatenated with themselves."""

    def __init__(self, in_dim: int, out_dim: int, config: ProjectorConfig):
        super().__init__(in_dim, out_dim, config)
        self.blocks = nn.ModuleList(
            _AttentionBlock(out_dim, config.num_heads) for _ in range(config.num_layers)
        )

    def forward(self, features: torch.Tensor, grid: Grid) -> torch.Tensor:
        context = self.inp(features)
        latents = self.queries.expand(features.shape[0], -1, -1)
        for block in self.blocks:
            latents = block(latents, torch.cat([context, latents], dim=1))
        return self.norm(latents)


@PROJECTORS.register("qformer")
class QFormer(_QueryProjector):
    """BLIP-2 style: each block lets the queries attend to each other, then to the image, then a feed-forward layer;
    a final linear map is the language projection."""

    def __init__(self, in_dim: int, out_dim: int, config: ProjectorConfig):
        super().__init__(in_dim, out_dim, config)
        self.self_blocks = nn.ModuleList(
            _AttentionBlock(out_dim, config.num_heads) for _ in range(config.num_layers)
        )
        self.cross_blocks = nn.ModuleList(
            _AttentionBlock(out_dim, config.num_heads) for _ in range(config.num_layers)
        )
        self.language_projection = nn.Linear(out_dim, out_dim)

    def forward(self, features: torch.Tensor, grid: Grid) -> torch.Tensor:
        context = self.inp(features)
        queries = self.queries.expand(features.shape[0], -1, -1)
        for self_block, cross_block in zip(self.self_blocks, self.cross_blocks, strict=True):
            queries = cross_block(self_block(queries, queries), context)
        return self.language_projection(self.norm(queries))
