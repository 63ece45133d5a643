"""The `vlmtune` model type: a Llava whose projector comes from the projector zoo.

It is a subclass, not a fork: the vision tower, the language model, the vectorized masked-scatter merge of image
features, generation and every PEFT/TRL integration are transformers' Llava code. Only two things change: the
projector (any entry of PROJECTORS) and the feature selection before it (patch-only tokens, CNN feature maps).
`vlmtune.register_auto_classes()` registers these classes with the transformers Auto classes, so
`AutoModelForImageTextToText.from_pretrained` loads a vlmtune checkpoint without `trust_remote_code`.
"""

from typing import Literal

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaModel, LlavaProcessor
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.auto import AutoModel
from transformers.models.llava.modeling_llava import LlavaPreTrainedModel

from vlmtune.config import ProjectorConfig
from vlmtune.model.projectors import PROJECTORS, Projector


@strict
class VlmtuneConfig(LlavaConfig):
    model_type = "vlmtune"

    # "patches" keeps only the patch tokens: it drops `vision_prefix_tokens` leading tokens (CLS and registers).
    vision_feature_select_strategy: Literal["default", "full", "patches"] = "default"
    vision_prefix_tokens: int = 0  # leading non-patch tokens the encoder emits (CLS = 1, DINOv2-reg = 5)
    vision_grid: list[int] | None = None  # (rows, cols) of patch tokens per image, for projectors that merge patches
    vision_feature_dim: int | None = None  # width of the selected features (all feature layers concatenated)
    projector: dict | None = None  # the projector's name and options (ProjectorConfig fields)


def build_projector(config: VlmtuneConfig) -> Projector:
    """The projector a checkpoint's config.json names, built from its saved ProjectorConfig fields."""
    projector = ProjectorConfig(**config.projector)
    return PROJECTORS.get(projector.name)(config.vision_feature_dim, config.text_config.hidden_size, projector)


def select_features(config, hidden_states: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The projector's input: the chosen layers' tokens (CNN maps flattened row-major), concatenated on features."""
    layers = config.vision_feature_layer
    skip = {"default": 1, "full": 0, "patches": config.vision_prefix_tokens}[config.vision_feature_select_strategy]
    selected = []
    for layer in [layers] if isinstance(layers, int) else layers:
        features = hidden_states[layer]
        if features.ndim == 4:  # a CNN feature map (images, channels, rows, cols): one token per position
            features = features.flatten(2).transpose(1, 2)
        selected.append(features[:, skip:])
    return torch.cat(selected, dim=-1)


class VlmtuneModel(LlavaModel):
    config: VlmtuneConfig

    def __init__(self, config: VlmtuneConfig):
        LlavaPreTrainedModel.__init__(self, config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.multi_modal_projector = build_projector(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        pixel_values = pixel_values.to(self.vision_tower.dtype)
        outputs = self.vision_tower(pixel_values=pixel_values, output_hidden_states=True, return_dict=True)
        features = select_features(self.config, outputs.hidden_states)
        projected = self.multi_modal_projector(features, tuple(self.config.vision_grid))
        # LlavaModel.forward concatenates the per-image list and scatters it into the <image> positions.
        return BaseModelOutputWithPooling(last_hidden_state=features, pooler_output=list(projected))


class VlmtuneForConditionalGeneration(LlavaForConditionalGeneration):
    config: VlmtuneConfig

    def __init__(self, config: VlmtuneConfig):
        LlavaPreTrainedModel.__init__(self, config)
        self.model = VlmtuneModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()


class VlmtuneProcessor(LlavaProcessor):
    """A LlavaProcessor that expands `<image>` to the projector's declared token count, whatever the patch grid."""

    def __init__(self, image_processor=None, tokenizer=None, image_seq_length: int = 0, chat_template=None, **kwargs):
        self.image_seq_length = image_seq_length  # image tokens per image: the projector's `output_tokens`
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        return self.image_token * self.image_seq_length

    def _get_num_multimodal_tokens(self, image_sizes=None, **kwargs):
        from transformers.processing_utils import MultiModalData

        if image_sizes is None:
            return MultiModalData()
        return MultiModalData(num_image_tokens=[self.image_seq_length] * len(image_sizes),
                              num_image_patches=[1] * len(image_sizes))
