"""Compose a VLM from a pretrained vision encoder, a pretrained LLM and a new projector.

With the `mlp2x_gelu` projector the result *is* a transformers `LlavaForConditionalGeneration` with a
`LlavaProcessor`: plain transformers, TRL, PEFT and vLLM load the saved checkpoint without importing vlmtune. Other
projectors give the `vlmtune` model type (modeling.py), which `vlmtune.register_auto_classes()` registers with the
Auto classes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vlmtune.errors import ConfigError
from vlmtune.model.projectors import PROJECTORS
from vlmtune.templates import TEMPLATES, Template

if TYPE_CHECKING:
    from vlmtune.config import ModelConfig, VisionConfig

IMAGE_TOKEN = "<image>"


def load_vision_tower(path: str, dtype: torch.dtype, **kwargs):
    """Load only the vision half of a checkpoint: a CLIP/SigLIP checkpoint holds a text tower we do not want."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    config = AutoConfig.from_pretrained(path)
    vision_config = getattr(config, "vision_config", config)
    model_class = MODEL_MAPPING[type(vision_config)]
    return model_class.from_pretrained(path, dtype=dtype, **kwargs)


def _vision_on_meta(path: str, dtype: torch.dtype):
    """The vision half of a checkpoint's architecture, built on the meta device: shapes, no weights."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    config = AutoConfig.from_pretrained(path)
    vision_config = getattr(config, "vision_config", config)
    with torch.device("meta"):
        return MODEL_MAPPING[type(vision_config)](vision_config).to(dtype)


def template_key(cfg: ModelConfig) -> str:
    """The TEMPLATES key a composed model uses: model.template, or with `auto` the LLM's own format."""
    return cfg.llm.template if cfg.template == "auto" else cfg.template


def _prepare_tokenizer(tokenizer, pad_token: str | None, template: Template) -> str:
    """Add the image placeholder, the template's markers and a padding token where the tokenizer lacks them; set the
    chat template; return the token that ends an assistant turn.

    `pad_token` names an existing token to pad with (model.llm.pad_token, per LLM family); without one a dedicated
    `<pad>` is added: reusing EOS makes "mask = ids != pad" style code drop real end-of-turn tokens.
    """
    end_of_turn = template.end_of_turn or tokenizer.eos_token
    if end_of_turn is None:
        raise ConfigError("this chat template ends turns with the tokenizer's EOS token, but the tokenizer has none: "
                          "pick another model.template")
    if template.text:
        tokenizer.chat_template = template.text
    elif not tokenizer.chat_template:
        raise ConfigError("model.template=native, but the tokenizer has no chat template: pick one of the "
                          f"vlmtune templates ({', '.join(sorted(TEMPLATES))})")
    vocab = tokenizer.get_vocab()
    missing = [token for token in (IMAGE_TOKEN, end_of_turn, *template.special_tokens) if token not in vocab]
    if missing:
        tokenizer.add_tokens(list(dict.fromkeys(missing)), special_tokens=True)
    # Some tokenizers pad with their end-of-turn/EOS token (SmolLM2 pads with <|im_end|>): that needs a fix too.
    if tokenizer.pad_token is None or tokenizer.pad_token in (end_of_turn, tokenizer.eos_token):
        if pad_token is not None and pad_token not in vocab:
            raise ConfigError(f"model.llm.pad_token={pad_token!r} is not a token of this tokenizer; "
                              "name one of its tokens or set it to null to add <pad>")
        if pad_token in (end_of_turn, tokenizer.eos_token):
            raise ConfigError(f"model.llm.pad_token={pad_token!r} also ends turns: pick a token that never appears "
                              "in the data, or null to add <pad>")
        tokenizer.add_special_tokens({"pad_token": pad_token or "<pad>"})
    return end_of_turn


@dataclass
class VisionProbe:
    """What the encoder emits for one processed image, measured rather than assumed from its config."""

    tokens: int  # tokens per image after the select strategy
    grid: tuple[int, int]  # (rows, cols) of patch positions
    prefix_tokens: int  # leading non-patch tokens (CLS, registers) the encoder emits
    feature_dim: int  # width of the selected features, all feature layers concatenated
    feature_map: bool  # True for CNNs: hidden states are (channels, rows, cols) maps


def _image_processor(cfg: VisionConfig):
    """The encoder's own image processor, or (image_policy=pad) LLaVA-1.5's pad-to-square processor with its settings.

    transformers' LlavaImageProcessor pads to a square filled with the mean colour before resizing, as LLaVA-1.5
    does; the checkpoint keeps a standard processor that plain transformers loads.
    """
    from transformers import AutoImageProcessor, LlavaImageProcessorPil

    image_processor = AutoImageProcessor.from_pretrained(cfg.path)
    if cfg.image_policy == "resize":
        return image_processor
    keep = ["size", "crop_size", "resample", "do_resize", "do_rescale", "rescale_factor", "do_normalize", "image_mean",
            "image_std"]
    settings = {k: getattr(image_processor, k) for k in keep if getattr(image_processor, k, None) is not None}
    # Llava's processor crops by default; the encoder's processor may not (SigLIP resizes to a square).
    crop = bool(getattr(image_processor, "do_center_crop", False))
    return LlavaImageProcessorPil(**settings, do_center_crop=crop, do_pad=True, do_convert_rgb=True)


def _pixels(image_processor, size: tuple[int, int]) -> torch.Tensor:
    from PIL import Image

    return image_processor(Image.new("RGB", size), return_tensors="pt")["pixel_values"]


def probe_vision(vision, image_processor, cfg: VisionConfig) -> VisionProbe:
    """Run one blank image through the encoder and measure tokens, grid, prefix tokens and feature width."""
    square = _pixels(image_processor, (224, 224))
    if _pixels(image_processor, (448, 224)).shape != square.shape:
        raise ConfigError(f"the image processor of {cfg.path} gives different sizes for different aspect ratios; "
                          "a fixed image-token count needs a fixed size: set model.vision.image_policy=pad")
    layers = [cfg.feature_layer] if isinstance(cfg.feature_layer, int) else list(cfg.feature_layer)
    with torch.no_grad():
        hidden = vision(pixel_values=square.to(vision.device, vision.dtype), output_hidden_states=True).hidden_states
    selected = [hidden[layer] for layer in layers]
    if selected[0].ndim == 4:  # CNN: (1, channels, rows, cols)
        grids = {tuple(h.shape[-2:]) for h in selected}
        if len(grids) > 1:
            raise ConfigError(f"model.vision.feature_layer={layers}: these layers have different map sizes {grids}; "
                              "pick layers of one stage")
        grid = grids.pop()
        return VisionProbe(grid[0] * grid[1], grid, 0, sum(h.shape[1] for h in selected), True)
    patch = vision.config.patch_size
    grid = (square.shape[-2] // patch, square.shape[-1] // patch)
    prefix = selected[0].shape[1] - grid[0] * grid[1]
    if cfg.select_strategy == "default" and prefix == 0:
        raise ConfigError(f"model.vision.select_strategy=default drops a CLS token, but {cfg.path} emits none "
                          "(SigLIP-style encoder): set model.vision.select_strategy=full")
    dropped = {"default": 1, "full": 0, "patches": prefix}[cfg.select_strategy]
    return VisionProbe(selected[0].shape[1] - dropped, grid, prefix, sum(h.shape[-1] for h in selected), False)


def _check_feature_layer(cfg: VisionConfig) -> None:
    layers = [cfg.feature_layer] if isinstance(cfg.feature_layer, int) else cfg.feature_layer
    if not isinstance(layers, list | tuple) or not layers or not all(isinstance(x, int) for x in layers):
        raise ConfigError(f"model.vision.feature_layer={cfg.feature_layer!r}: expected an int or a list of ints")
    if 0 in layers:
        # transformers 5.24's Llava does not request hidden states for layer 0 and fails deep inside the forward.
        raise ConfigError("model.vision.feature_layer=0 is not supported; count from the end "
                          "(-1 = last layer, -(layers + 1) = the patch embeddings)")


def _llava_strategy(cfg: VisionConfig, probe: VisionProbe) -> str | None:
    """Llava's own name for the select strategy, or None when only the vlmtune model type can express it."""
    if probe.feature_map:
        return None
    if cfg.select_strategy == "patches":
        return {0: "full", 1: "default"}.get(probe.prefix_tokens)  # registers need the vlmtune type
    return cfg.select_strategy


@dataclass
class Blueprint:
    """Everything a composed model needs except the LLM's weights: enough to build its processor cheaply."""

    cfg: ModelConfig
    vision: Any  # the loaded vision tower
    image_processor: Any
    tokenizer: Any  # the LLM's tokenizer with <image>, end-of-turn and pad tokens and the chat template
    end_of_turn: str  # the token that ends an assistant turn: generation stops there
    llm_config: Any  # the LLM's config (no weights)
    probe: VisionProbe
    projector: Any  # the projector's declaration, on the meta device (compose builds the real one)
    image_tokens: int  # tokens per image: the projector's declared count
    llava_strategy: str | None  # Llava's select strategy, or None when only the vlmtune type can express it

    @property
    def plain_llava(self) -> bool:
        return self.cfg.projector.name == "mlp2x_gelu" and self.llava_strategy is not None

    def processor(self):
        from transformers import LlavaProcessor

        from vlmtune.model.modeling import VlmtuneProcessor

        template = self.tokenizer.chat_template
        if self.plain_llava:
            return LlavaProcessor(
                image_processor=self.image_processor,
                tokenizer=self.tokenizer,
                patch_size=self.vision.config.patch_size,
                vision_feature_select_strategy=self.llava_strategy,
                num_additional_image_tokens=self.probe.prefix_tokens,
                chat_template=template,
            )
        return VlmtuneProcessor(image_processor=self.image_processor, tokenizer=self.tokenizer,
                                image_seq_length=self.image_tokens, chat_template=template)


def _require_local(path: str, key: str) -> None:
    """A local path (not a hub id) must exist: say which key and what to do, not a hub-id error from transformers."""
    if path.startswith(("/", ".", "~")) and not Path(path).expanduser().exists():
        hint = " (tiny offline parts: run `vlmtune tiny`)" if "/tiny/" in path else ""
        raise ConfigError(f"{key}={path} does not exist{hint}")


def blueprint(cfg: ModelConfig, meta: bool = False) -> Blueprint:
    """Load the vision tower, tokenizer and LLM config, measure the image tokens, build the projector.

    `meta`: the tower is built on the meta device from its config alone (no weights read) and no tokenizer is read.
    """
    from transformers import AutoConfig, AutoTokenizer

    if cfg.path is not None:
        raise ConfigError("model.path is set (an existing HF VLM): load it with load_vlm, there is nothing to compose")
    _require_local(cfg.vision.path, "model.vision.path")
    _require_local(cfg.llm.path, "model.llm.path")
    dtype = getattr(torch, cfg.dtype)
    projector_class = PROJECTORS.get(cfg.projector.name)
    _check_feature_layer(cfg.vision)

    vision = _vision_on_meta(cfg.vision.path, dtype) if meta else load_vision_tower(cfg.vision.path, dtype)
    image_processor = _image_processor(cfg.vision)
    llm_config = AutoConfig.from_pretrained(cfg.llm.path)
    tokenizer = end_of_turn = None
    if not meta:
        tokenizer = AutoTokenizer.from_pretrained(cfg.llm.tokenizer or cfg.llm.path)
        end_of_turn = _prepare_tokenizer(tokenizer, cfg.llm.pad_token, TEMPLATES.get(template_key(cfg)))

    probe = probe_vision(vision, image_processor, cfg.vision)
    # A declaration on the meta device (its token count, whether it needs the grid): no weights are drawn here, so
    # the real projector built in `compose` gets the same random init whatever ran before it.
    with torch.device("meta"):
        projector = projector_class(probe.feature_dim, llm_config.hidden_size, cfg.projector)
    if projector.needs_grid and probe.tokens != probe.grid[0] * probe.grid[1]:
        raise ConfigError(f"model.projector.name={cfg.projector.name} merges neighbouring patches, but the selected "
                          f"{probe.tokens} tokens are not the {probe.grid[0]}x{probe.grid[1]} patch grid: set "
                          "model.vision.select_strategy=patches")
    return Blueprint(cfg, vision, image_processor, tokenizer, end_of_turn, llm_config, probe, projector,
                     projector.output_tokens(probe.tokens, probe.grid), _llava_strategy(cfg.vision, probe))


def compose(cfg: ModelConfig, meta: bool = False):
    """Build the VLM and its processor that `cfg` describes (vision + LLM weights loaded, projector new).

    The result is a plain `llava` model when the projector is `mlp2x_gelu` and Llava can select the features itself;
    otherwise it is the `vlmtune` model type (a Llava subclass with the chosen projector).

    `meta`: the whole model on the meta device from the parts' configs (real sizes, no weights, no tokenizer: the
    embedding rows of tokens vlmtune would add are not there); the processor is None.
    """
    from contextlib import nullcontext

    from transformers import AutoModelForCausalLM, LlavaConfig, LlavaForConditionalGeneration

    from vlmtune.model.modeling import VlmtuneConfig, VlmtuneForConditionalGeneration

    parts = blueprint(cfg, meta=meta)
    dtype = getattr(torch, cfg.dtype)
    if meta:
        with torch.device("meta"):
            llm = AutoModelForCausalLM.from_config(parts.llm_config, dtype=dtype)
    else:
        llm = AutoModelForCausalLM.from_pretrained(cfg.llm.path, dtype=dtype)
    tokenizer, probe = parts.tokenizer, parts.probe
    common = dict(
        vision_config=parts.vision.config,
        text_config=llm.config,
        # meta: the id <image> would get as the first added token
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) if tokenizer else llm.config.vocab_size,
        image_seq_length=parts.image_tokens,
        projector_hidden_act="gelu",
        vision_feature_layer=cfg.vision.feature_layer,
        tie_word_embeddings=bool(getattr(llm.config, "tie_word_embeddings", False)),
    )
    if parts.plain_llava:
        config = LlavaConfig(**common, vision_feature_select_strategy=parts.llava_strategy)
        model_class = LlavaForConditionalGeneration
    else:
        config = VlmtuneConfig(**common, vision_feature_select_strategy=cfg.vision.select_strategy,
                               vision_prefix_tokens=probe.prefix_tokens, vision_grid=list(probe.grid),
                               vision_feature_dim=probe.feature_dim, projector=asdict(cfg.projector))
        model_class = VlmtuneForConditionalGeneration
    # Build the shell on the meta device and move the loaded parts in: no second copy of the weights in memory.
    with torch.device("meta"):
        model = model_class(config)
    model.model.vision_tower = parts.vision
    model.model.language_model = llm.model
    model.lm_head = llm.lm_head
    if parts.plain_llava:  # transformers' own module, so the checkpoint stays a plain `llava` one
        from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

        with torch.device("meta") if meta else nullcontext():
            projector = LlavaMultiModalProjector(config)
    else:
        with torch.device("meta") if meta else nullcontext():
            projector = type(parts.projector)(probe.feature_dim, llm.config.hidden_size, cfg.projector)
    model.model.multi_modal_projector = projector.to(dtype)
    if meta:
        return model, None
    if len(tokenizer) != model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model.config.pad_token_id = tokenizer.pad_token_id
    end_of_turn = tokenizer.convert_tokens_to_ids(parts.end_of_turn)
    model.generation_config.eos_token_id = sorted({end_of_turn, *(_as_list(llm.generation_config.eos_token_id))})
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, parts.processor()


def _as_list(value) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]
