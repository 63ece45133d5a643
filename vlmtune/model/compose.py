"""Compose a VLM from a pretrained vision encoder, a pretrained LLM and a new projector.

With the `mlp2x_gelu` projector the result *is* a transformers `LlavaForConditionalGeneration` with a
`LlavaProcessor`: plain transformers, TRL, PEFT and vLLM load the saved checkpoint without importing vlmtune.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from vlmtune.model.projectors import PROJECTORS
from vlmtune.templates import END_OF_TURN, TEMPLATES

if TYPE_CHECKING:
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    from vlmtune.config import ModelConfig

IMAGE_TOKEN = "<image>"


def load_vision_tower(path: str, dtype: torch.dtype):
    """Load only the vision half of a checkpoint: a CLIP/SigLIP checkpoint holds a text tower we do not want."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    config = AutoConfig.from_pretrained(path)
    vision_config = getattr(config, "vision_config", config)
    model_class = MODEL_MAPPING[type(vision_config)]
    return model_class.from_pretrained(path, dtype=dtype)


def _prepare_tokenizer(tokenizer) -> None:
    """Add the image placeholder and a padding token where the LLM's tokenizer lacks them."""
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    if tokenizer.pad_token is None:
        # A dedicated pad token: reusing EOS makes "mask = ids != pad" style code drop real end-of-turn tokens.
        tokenizer.add_special_tokens({"pad_token": "<pad>"})


def _count_extra_tokens(vision, image_processor) -> tuple[int, int]:
    """(patch tokens, extra tokens such as CLS) that the vision tower emits for one processed image."""
    from PIL import Image

    size = image_processor.crop_size if getattr(image_processor, "do_center_crop", False) else image_processor.size
    height = size.get("height", size.get("shortest_edge"))
    width = size.get("width", size.get("shortest_edge"))
    pixels = image_processor(Image.new("RGB", (width, height)), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        hidden = vision(pixel_values=pixels.to(vision.dtype)).last_hidden_state
    patch = vision.config.patch_size
    patches = (height // patch) * (width // patch)
    return patches, hidden.shape[1] - patches


def compose(cfg: ModelConfig) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """Build the VLM and its processor that `cfg` describes (vision + LLM weights loaded, projector new)."""
    from transformers import (
        AutoImageProcessor,
        AutoModelForCausalLM,
        AutoTokenizer,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    dtype = getattr(torch, cfg.dtype)
    template = TEMPLATES.get(cfg.template)
    build_projector = PROJECTORS.get(cfg.projector.name)

    if cfg.vision.feature_layer == 0:
        # transformers 5.24's Llava does not request hidden states for layer 0 and fails deep inside the forward.
        raise ValueError("model.vision.feature_layer=0 is not supported by transformers' Llava; count from the end "
                         "(-1 = last layer, -(layers + 1) = the patch embeddings)")
    vision = load_vision_tower(cfg.vision.path, dtype)
    image_processor = AutoImageProcessor.from_pretrained(cfg.vision.path)
    llm = AutoModelForCausalLM.from_pretrained(cfg.llm.path, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(cfg.llm.tokenizer or cfg.llm.path)
    _prepare_tokenizer(tokenizer)
    tokenizer.chat_template = template

    patches, extra = _count_extra_tokens(vision, image_processor)
    if cfg.vision.select_strategy == "default" and extra == 0:
        raise ValueError(
            f"model.vision.select_strategy=default drops a CLS token, but {cfg.vision.path} emits none "
            "(SigLIP-style encoder): set model.vision.select_strategy=full"
        )
    image_tokens = patches + (extra if cfg.vision.select_strategy == "full" else extra - 1)

    config = LlavaConfig(
        vision_config=vision.config,
        text_config=llm.config,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=image_tokens,
        projector_hidden_act="gelu",
        vision_feature_select_strategy=cfg.vision.select_strategy,
        vision_feature_layer=cfg.vision.feature_layer,
        tie_word_embeddings=bool(getattr(llm.config, "tie_word_embeddings", False)),
    )
    # Build the shell on the meta device and move the loaded parts in: no second copy of the weights in memory.
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    model.model.vision_tower = vision
    model.model.language_model = llm.model
    model.lm_head = llm.lm_head
    model.model.multi_modal_projector = build_projector(config).to(dtype)
    if len(tokenizer) != model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model.config.pad_token_id = tokenizer.pad_token_id
    end_of_turn = tokenizer.convert_tokens_to_ids(END_OF_TURN[cfg.template])
    model.generation_config.eos_token_id = sorted({end_of_turn, *(_as_list(llm.generation_config.eos_token_id))})
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=vision.config.patch_size,
        vision_feature_select_strategy=cfg.vision.select_strategy,
        num_additional_image_tokens=extra,
        chat_template=template,
    )
    return model, processor


def _as_list(value) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]
