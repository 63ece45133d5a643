"""Where the vision encoder, projector and LLM sit inside each supported VLM architecture (transformers 5 layouts).

One table, keyed by `config.model_type`, with full module paths from the root of the
`*ForConditionalGeneration` model. Freezing, the parameter table, the LoRA target (LLM only), the projector saved
with an adapter and bitsandbytes' skip list all read it. A projector nested inside the vision part (Qwen2-VL's
`model.visual.merger`) wins over it: the longest matching prefix decides.
"""

from __future__ import annotations

from pathlib import Path

from vlmtune.errors import ConfigError

_LLAVA = {"vision": "model.vision_tower", "projector": "model.multi_modal_projector", "llm": "model.language_model"}

ARCHITECTURES: dict[str, dict[str, str]] = {
    "llava": _LLAVA,
    "vlmtune": _LLAVA,  # vlmtune's own type (modeling.py) is a Llava with another projector
    "llava_next": _LLAVA,  # its `model.image_newline` parameter is "other": trained only under peft=none
    "paligemma": _LLAVA,
    "idefics3": {"vision": "model.vision_model", "projector": "model.connector", "llm": "model.text_model"},
    "qwen2_vl": {"vision": "model.visual", "projector": "model.visual.merger", "llm": "model.language_model"},
    "qwen2_5_vl": {"vision": "model.visual", "projector": "model.visual.merger", "llm": "model.language_model"},
}
PART_NAMES = ("vision", "projector", "llm")


def model_type(model) -> str:
    """`config.model_type` of a model, PEFT-wrapped or not."""
    return model.config.model_type


def parts_of(model_or_type) -> dict[str, str]:
    """{vision, projector, llm: module path} for a model (or a model_type string).

    A model type outside the table (e.g. a composed model with its own type) gets the first layout whose three
    parts all exist in the model; a bare model_type outside the table gets the composed (llava) layout.
    """
    kind = model_or_type if isinstance(model_or_type, str) else model_type(model_or_type)
    if kind in ARCHITECTURES:
        return ARCHITECTURES[kind]
    if isinstance(model_or_type, str):
        return _LLAVA
    else:
        names = {name.removeprefix("base_model.model.") for name, _ in model_or_type.named_modules()}
        for layout in ARCHITECTURES.values():
            if all(prefix in names for prefix in layout.values()):
                return layout
    raise ConfigError(f"model type {kind!r} has no known layout of vision / projector / LLM parts; known types: "
                      f"{', '.join(sorted(ARCHITECTURES))} (add it to vlmtune.model.parts.ARCHITECTURES)")


def part_of(name: str, parts: dict[str, str]) -> str:
    """Which part a parameter (or module) name belongs to; PEFT's `base_model.model.` prefix is ignored."""
    name = name.removeprefix("base_model.model.")
    best, best_len = None, -1
    for part, prefix in parts.items():
        if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best_len:
            best, best_len = part, len(prefix)
    if best is not None:
        return best
    return "lm_head" if name.startswith("lm_head") else "other"


def skip_modules(model_type_: str) -> list[str]:
    """bitsandbytes' skip list that quantizes the LLM only: vision, projector and lm_head by full path."""
    parts = parts_of(model_type_)
    skip = [parts["vision"], parts["projector"]]
    return [p for p in skip if not any(p.startswith(q + ".") for q in skip)] + ["lm_head"]


def model_type_at(path: str | Path) -> str:
    """The model_type of a checkpoint directory or hub id (an adapter directory: of its base), reading config only."""
    import json

    from transformers import AutoConfig

    from vlmtune import register_auto_classes

    register_auto_classes()  # a `vlmtune` checkpoint's config
    adapter = Path(str(path)) / "adapter_config.json"
    if adapter.exists():
        path = json.loads(adapter.read_text())["base_model_name_or_path"]
    return AutoConfig.from_pretrained(path).model_type
