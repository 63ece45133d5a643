"""An existing HF VLM (AutoModelForImageTextToText + AutoProcessor) as the starting point: `model=hf_vlm
model.path=<dir or hub id>` or a named entry such as `model=qwen2_vl_2b`.

The checkpoint loads as it is; what vlmtune changes is the processor's chat template. Checkpoints ship templates
without `{% generation %}` marks (or, llava-hf's, with marks but no end-of-turn token after the answer), so the
assistant-only loss would mask everything or never teach the model to stop. `model.template` picks a vlmtune
template that renders the checkpoint's own prompt format with generation marks around answer + end-of-turn token;
`auto` picks it from the architecture, `native` keeps the checkpoint's template (it must have generation marks).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from vlmtune.errors import ConfigError
from vlmtune.templates import TEMPLATES

log = logging.getLogger("vlmtune")

# model.template=auto: the vlmtune template whose text matches each architecture's own chat format.
AUTO_TEMPLATES = {"llava": "llava", "idefics3": "idefics3", "qwen2_vl": "qwen2_vl", "qwen2_5_vl": "qwen2_vl",
                  "paligemma": "paligemma"}
# LLaVA-NeXT's format follows its LLM: Vicuna (llama) like LLaVA-1.5, Mistral [INST] blocks.
LLAVA_NEXT_TEMPLATES = {"llama": "llava", "mistral": "llava_mistral"}
_GENERATION = re.compile(r"{%-?\s*generation\s*-?%}")


def resolve_template(template: str, config) -> str:
    """The TEMPLATES key (or "native") that `model.template` means for a model with this config."""
    if template != "auto":
        return template
    kind = config.model_type
    if kind == "llava_next":
        text_kind = getattr(config.text_config, "model_type", None)
        if text_kind in LLAVA_NEXT_TEMPLATES:
            return LLAVA_NEXT_TEMPLATES[text_kind]
    elif kind in AUTO_TEMPLATES:
        return AUTO_TEMPLATES[kind]
    raise ConfigError(f"model.template=auto has no template for model type {kind!r}; set model.template to one of "
                      f"{', '.join(sorted(TEMPLATES))}, or `native` when the checkpoint's own chat template has "
                      "{% generation %} marks")


def _as_list(value) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def prepare_for_training(model, processor, template: str) -> str:
    """Write the chat template into the processor, make its end-of-turn token stop generation, ensure a pad token.

    Returns the template key used. Raises when the template cannot produce a loss mask.
    """
    key = resolve_template(template, model.config)
    tokenizer = processor.tokenizer
    if key == "native":
        native = processor.chat_template or tokenizer.chat_template or ""
        if not _GENERATION.search(native if isinstance(native, str) else str(native)):
            raise ConfigError("model.template=native: the checkpoint's chat template has no {% generation %} marks, so "
                              "assistant-only training would mask every token; pick a vlmtune template "
                              f"(model.template=auto or one of {', '.join(sorted(TEMPLATES))})")
        end = tokenizer.eos_token
    else:
        template = TEMPLATES.get(key)
        processor.chat_template = tokenizer.chat_template = template.text
        end = template.end_of_turn or tokenizer.eos_token
    end_id = tokenizer.convert_tokens_to_ids(end) if end else None
    if end_id is None or end_id == tokenizer.unk_token_id:
        raise ConfigError(f"model.template={key}: its end-of-turn token {end!r} is not a token of this tokenizer")
    if tokenizer.pad_token is None:  # the collator masks padding by attention mask, so EOS can pad
        log.warning("the tokenizer has no pad token: padding with %s", tokenizer.eos_token)
        tokenizer.pad_token = tokenizer.eos_token
    generation = model.generation_config
    generation.eos_token_id = sorted({end_id, *_as_list(generation.eos_token_id)})
    generation.pad_token_id = tokenizer.pad_token_id
    return key


def model_path(path: str) -> str:
    """A local directory as an absolute path (adapters record it as their base); a hub id unchanged."""
    return str(Path(path).resolve()) if Path(path).exists() else path


def load_hf_vlm(cfg, quantization_config=None):
    """(model, processor) of `cfg.path` (a ModelConfig), ready for training with `cfg.template`."""
    from vlmtune.model.checkpoint import load_vlm

    model, processor = load_vlm(model_path(cfg.path), dtype=getattr(torch, cfg.dtype),
                                quantization_config=quantization_config, what="model.path")
    key = prepare_for_training(model, processor, cfg.template)
    log.info("%s (%s): chat template %s", cfg.path, model.config.model_type, key)
    return model, processor

