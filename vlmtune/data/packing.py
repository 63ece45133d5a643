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

from typing import Any

import torch

from vlmtune.data.lengths import _with_images

# Model types whose position ids are plain 1-D positions (Qwen2-VL's 3-D rope positions cannot be restarted this way).
PACKABLE = ("llava", "vlmtune")


class PackedCollator:
    """Collate examples ({messages, images}) into one padding-free row for the model and TRL's trainer."""

    def __init__(self, processor):
        self.processor = processor

    def _encode(self, example: dict[str, Any]) -> dict[str, torch.Tensor]:
        messages = _with_images(example["messages"], example["images"])
        out = self.processor.apply_chat_template([messages], tokenize=True, return_dict=True, return_tensors="pt",
                                                 return_assistant_tokens_mask=True)
        ids = out["input_ids"][0]
        labels = torch.where(torch.as_tensor(out["assistant_masks"][0]).bool(), ids, -100)
        labels[0] = -100  # never predicted across the boundary from the previous sample
        return {"input_ids": ids, "labels": labels, "pixel_values": out.get("pixel_values")}

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        encoded = [self._encode(example) for example in examples]
        batch = {
            "input_ids": torch.cat([e["input_ids"] for e in encoded])[None],
            "labels": torch.cat([e["labels"] for e in encoded])[None],
            "position_ids": torch.cat([torch.arange(len(e["input_ids"])) for e in encoded])[None],
            # transformers reads packing from the position ids only without a KV cache (a training forward).
            "use_cache": False,
        }
        pixels = [e["pixel_values"] for e in encoded if e["pixel_values"] is not None]
        if pixels:
            batch["pixel_values"] = torch.cat(pixels)
        return batch


def check_packable(model_type: str) -> None:
    if model_type not in PACKABLE:
        raise ValueError(f"data.packing=true is supported for {', '.join(PACKABLE)} models, not {model_type!r} "
                         "(its position ids are not plain per-token positions); set data.packing=false")
