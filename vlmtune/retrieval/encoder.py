"""One interface over what can embed: a dual encoder (images and texts in one space) or a VLM's vision tower
(images only). Embeddings are L2-normalised, so inner product is cosine similarity."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from vlmtune.data.images import load_image
from vlmtune.errors import CheckpointError, ConfigError


class Encoder:
    """Batched, normalised image and text embeddings from a loaded model."""

    def __init__(self, model, processor, *, dual: bool, path: str = "") -> None:
        self.model, self.processor, self.dual, self.path = model, processor, dual, path
        self.model.eval()

    @property
    def has_text(self) -> bool:
        return self.dual

    @torch.no_grad()
    def images(self, images: Sequence[Any], batch_size: int = 64) -> torch.Tensor:
        """(N, dim) embeddings of images given as paths, bytes or PIL images."""
        out = []
        for start in range(0, len(images), batch_size):
            batch = [load_image(image, "embedding") for image in images[start:start + batch_size]]
            out.append(self._image_batch(batch))
        return torch.cat(out) if out else torch.empty(0, 0)

    def _image_batch(self, images: list) -> torch.Tensor:
        if self.dual:
            pixels = self.processor.images(images).to(self.model.dtype)
            return F.normalize(self.model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
        from vlmtune.model.parts import parts_of

        pixels = self.processor.image_processor(images, return_tensors="pt")["pixel_values"].to(self.model.dtype)
        tower = self.model.get_submodule(parts_of(self.model)["vision"])
        output = tower(pixel_values=pixels)
        pooled = getattr(output, "pooler_output", None)
        if pooled is None:  # no pooling head: the mean of the last layer's tokens
            pooled = output.last_hidden_state.mean(dim=1)
        return F.normalize(pooled.flatten(1), dim=-1)

    @torch.no_grad()
    def texts(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """(N, dim) embeddings of texts; a VLM's vision tower has no text side."""
        if not self.dual:
            raise ConfigError(f"{self.path} is a VLM: its vision tower embeds images only; embed texts with a dual "
                             "encoder (a `vlmtune contrastive` checkpoint, CLIP or SigLIP)")
        out = []
        for start in range(0, len(texts), batch_size):
            tokens = self.processor.texts(list(texts[start:start + batch_size]))
            out.append(F.normalize(self.model.get_text_features(**tokens).pooler_output, dim=-1))
        return torch.cat(out) if out else torch.empty(0, 0)


def load_encoder(path: str | Path, what: str = "checkpoint") -> Encoder:
    """A dual encoder checkpoint (CLIP, SigLIP, a `contrastive` run's) or a VLM checkpoint, by its config; a local
    directory or a hub id."""
    from vlmtune.contrastive.model import is_dual_encoder, load_dual
    from vlmtune.model.checkpoint import ADAPTER_CONFIG, is_adapter

    local = str(path).startswith((".", "/", "~")) or Path(path).exists()
    if local and not any((Path(path) / name).exists() for name in ("config.json", ADAPTER_CONFIG)):
        raise CheckpointError(f"{what}={path} is not a checkpoint directory (no config.json); give a dual encoder "
                                "(a `vlmtune contrastive` run's checkpoint/, CLIP, SigLIP) or a VLM checkpoint")
    if not is_adapter(path) and is_dual_encoder(path):
        model, processor, _ = load_dual(path, what)
        return Encoder(model, processor, dual=True, path=str(path))
    from vlmtune.model.checkpoint import load_vlm

    model, processor = load_vlm(path, what=what)
    return Encoder(model, processor, dual=False, path=str(path))
