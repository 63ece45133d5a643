"""Padding-free packing of multimodal samples: a batch becomes one row with no padding token in it.

Each sample is rendered and tokenized on its own (the same chat template and assistant mask as the unpacked
collator), then the samples are concatenated: input ids, labels, and `position_ids` that restart at 0 for every
sample. Without an attention mask or KV cache, transformers builds a block-diagonal causal mask from restarting
position ids, so no token attends across samples, and the rotary positions are those of the sample alone. The first
label of each sample is masked: in a packed row it would be predicted from the previous sample's last token. Images
are concatenated in order and scattered into their placeholders by the model as usual. The loss therefore equals the
unpacked loss on the same samples (tested to 1e-5) while no compute is spent on padding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from vlmtune.data.lengths import with_images
from vlmtune.errors import ConfigError

# Model types that train on a packed row: plain 1-D positions (Llava, vlmtune, Idefics3's Llama) or Qwen2-VL's 3-D
# rope positions, computed per sample by the model's own get_rope_index and concatenated.
PACKABLE = ("llava", "vlmtune", "idefics3", "qwen2_vl")
THREE_D_ROPE = ("qwen2_vl",)
# Per-sample processor outputs that a packed row concatenates (images in order), beside ids, labels and positions.
IMAGE_KEYS = ("pixel_values", "pixel_attention_mask", "image_grid_thw")


class PackedCollator:
    """Collate examples ({messages, images}) into one padding-free row for the model and TRL's trainer."""

    def __init__(self, processor, rope_index: Callable | None = None):
        self.processor = processor
        self.rope_index = rope_index  # Qwen2-VL: the model's get_rope_index (3-D positions of one sample)

    def _encode(self, example: dict[str, Any]) -> dict[str, torch.Tensor]:
        messages = with_images(example["messages"], example["images"])
        out = self.processor.apply_chat_template([messages], tokenize=True, return_dict=True, return_tensors="pt",
                                                 return_assistant_tokens_mask=True)
        ids = out["input_ids"][0]
        labels = torch.where(torch.as_tensor(out["assistant_masks"][0]).bool(), ids, -100)
        labels[0] = -100  # never predicted across the boundary from the previous sample
        encoded = {"input_ids": ids, "labels": labels, "position_ids": self._positions(out)}
        return encoded | {key: out[key] for key in IMAGE_KEYS if key in out}

    @torch.no_grad()
    def _positions(self, out) -> torch.Tensor:
        """(1, L) positions from 0; for 3-D rope (4, L): the text positions first (transformers builds the packed
        mask from them), then the sample's temporal / height / width positions."""
        text = torch.arange(out["input_ids"].shape[1])
        if self.rope_index is None:
            return text[None]
        if "image_grid_thw" in out:
            rope, _ = self.rope_index(out["input_ids"], mm_token_type_ids=out["mm_token_type_ids"],
                                      image_grid_thw=out["image_grid_thw"])
            rope = rope[:, 0]
        else:  # text only: the three rope axes are the text positions
            rope = text.expand(3, -1)
        return torch.cat([text[None], rope])

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        encoded = [self._encode(example) for example in examples]
        positions = torch.cat([e["position_ids"] for e in encoded], dim=1)
        batch = {
            "input_ids": torch.cat([e["input_ids"] for e in encoded])[None],
            "labels": torch.cat([e["labels"] for e in encoded])[None],
            "position_ids": positions if positions.shape[0] == 1 else positions[:, None],
            # transformers reads packing from the position ids only without a KV cache (a training forward).
            "use_cache": False,
        }
        for key in IMAGE_KEYS:
            parts = [e[key] for e in encoded if key in e]
            if parts:
                batch[key] = torch.cat(parts, dim=_image_axis(key, parts[0]))
        return batch


def _image_axis(key: str, tensor: torch.Tensor) -> int:
    """The axis images run along: Idefics3 keeps a row axis first ((1, images, C, H, W) pixels, (1, images, H, W)
    masks); Llava's pixels and Qwen2-VL's patches and grids start with it."""
    return 1 if (key == "pixel_values" and tensor.ndim == 5) or key == "pixel_attention_mask" else 0


def check_packable(model_type: str) -> None:
    if model_type not in PACKABLE:
        raise ConfigError(f"data.packing=true is supported for {', '.join(PACKABLE)} models, not {model_type!r} "
                          "(its position ids are not plain per-token positions); set data.packing=false")


def packed_collator(processor, model) -> PackedCollator:
    """The packing collator for `model` (a PEFT wrapper or not): Qwen2-VL's positions come from its get_rope_index."""
    model_type = model.config.model_type
    check_packable(model_type)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return PackedCollator(processor, base.model.get_rope_index if model_type in THREE_D_ROPE else None)
