"""Tiny random-initialised *complete* HF VLMs (llava, idefics3, qwen2_vl), written as ordinary hub-style directories.

`model=hf_vlm model.path=<dir>` fine-tunes an existing VLM through `AutoModelForImageTextToText` + `AutoProcessor`;
these directories let the tests exercise that path offline, per architecture. Each holds the model, its processor,
a tokenizer from the same BPE trainer as the tiny LLMs' (vlmtune.tiny.tokenizer) with the special tokens that
architecture's processor needs, and the chat template the real checkpoints ship (which has no `{% generation %}`
marks, except llava-hf's, and no end-of-turn token after the answer there): vlmtune writes its own template with
generation marks at load time (`model.template`), exactly as it does for the real checkpoints.
"""

from __future__ import annotations

from pathlib import Path

from vlmtune.tiny.parts import IMAGE_SIZE, PATCH_SIZE
from vlmtune.tiny.tokenizer import train_tokenizer

TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=1024)

# The templates the real checkpoints ship (llava-hf/llava-1.5-7b-hf, HuggingFaceTB/SmolVLM-256M-Instruct,
# Qwen/Qwen2-VL-2B-Instruct), reduced to images and text: what vlmtune replaces by its own at load time.
NATIVE_TEMPLATES = {
    "llava": (
        "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
        "{% endif %}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
        "{{ '<image>\n' }}{% endfor %}{% if message['role'] != 'assistant' %}"
        "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
        "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
        "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
    ),
    "idefics3": (
        "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
        "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
        "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
        "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
        "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
    ),
    "qwen2_vl": (
        "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
        "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
        "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}"
        "{% for content in message['content'] %}{% if content['type'] == 'image' %}"
        "<|vision_start|><|image_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
        "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
        "{% endif %}"
    ),
}

# Special tokens per architecture: (bos, eos, pad, others). Names follow the real checkpoints' tokenizers.
TOKENS = {
    "llava": ("<s>", "</s>", "<pad>", ["<image>"]),
    "idefics3": ("<|im_start|>", "<end_of_utterance>", "<|im_end|>",
                 ["<fake_token_around_image>", "<image>", "<global-img>",
                  *[f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]]),
    "qwen2_vl": (None, "<|im_end|>", "<|endoftext|>",
                 ["<|im_start|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]),
}
ARCHITECTURES = tuple(TOKENS)


def _tokenizer(arch: str):
    """`arch`'s tokenizer; llava's prepends <s> like Llama's does."""
    bos, eos, pad, others = TOKENS[arch]
    return train_tokenizer([t for t in [bos, eos, pad] if t] + others, bos=bos, eos=eos, pad=pad,
                           prepend_bos=arch == "llava", extra_text=("USER: ASSISTANT: User: Assistant:",),
                           model_max_length=1024)


def _ids(tokenizer) -> dict:
    return dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                bos_token_id=tokenizer.bos_token_id)


def _llava(tokenizer):
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              projection_dim=32, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE)
    config = LlavaConfig(vision_config=vision, text_config=LlamaConfig(**TEXT, **_ids(tokenizer)),
                         image_token_index=tokenizer.convert_tokens_to_ids("<image>"), image_seq_length=9,
                         vision_feature_select_strategy="default", vision_feature_layer=-2,
                         projector_hidden_act="gelu")
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE},
                                            crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH_SIZE,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=NATIVE_TEMPLATES["llava"])
    return LlavaForConditionalGeneration(config), processor


def _idefics3(tokenizer):
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
        Idefics3VisionConfig,
        LlamaConfig,
    )

    patch, scale = 8, 2  # 48 px -> 6x6 patches -> pixel shuffle by 2 -> 9 image tokens
    vision = Idefics3VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                  image_size=IMAGE_SIZE, patch_size=patch)
    config = Idefics3Config(vision_config=vision, text_config=LlamaConfig(**TEXT, **_ids(tokenizer)),
                            image_token_id=tokenizer.convert_tokens_to_ids("<image>"), scale_factor=scale,
                            pad_token_id=tokenizer.pad_token_id)
    image_processor = Idefics3ImageProcessorPil(do_image_splitting=False, size={"longest_edge": IMAGE_SIZE},
                                                max_image_size={"longest_edge": IMAGE_SIZE})
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                  image_seq_len=(IMAGE_SIZE // patch) ** 2 // scale**2,
                                  chat_template=NATIVE_TEMPLATES["idefics3"])
    return Idefics3ForConditionalGeneration(config), processor


def _qwen2_vl(tokenizer):
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessorPil,
        Qwen2VLProcessor,
    )

    patch, merge = 8, 2  # 48 px -> 6x6 patches -> merged 2x2 -> 9 image tokens
    vision = dict(depth=2, embed_dim=32, hidden_size=TEXT["hidden_size"], num_heads=2, mlp_ratio=2,
                  patch_size=patch, spatial_merge_size=merge, temporal_patch_size=2)
    # mrope splits each head's rotary half (head_dim 16 -> 8) between time, height and width positions.
    text = dict(**TEXT, **_ids(tokenizer), model_type="qwen2_vl_text",
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in [
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")]}
    config = Qwen2VLConfig(vision_config=vision, text_config=text, **ids)
    pixels = IMAGE_SIZE * IMAGE_SIZE
    image_processor = Qwen2VLImageProcessorPil(size={"shortest_edge": pixels, "longest_edge": pixels},
                                               patch_size=patch, merge_size=merge, temporal_patch_size=2)
    processor = Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                 chat_template=NATIVE_TEMPLATES["qwen2_vl"])
    return Qwen2VLForConditionalGeneration(config), processor


BUILDERS = {"llava": _llava, "idefics3": _idefics3, "qwen2_vl": _qwen2_vl}


def write_tiny_vlm(arch: str, out_dir: Path, seed: int = 3) -> None:
    """Write a tiny random `arch` VLM with its processor to `out_dir` (loadable with the Auto classes)."""
    import torch

    from vlmtune.compat import allow_missing_video_processor

    allow_missing_video_processor()
    tokenizer = _tokenizer(arch)
    torch.manual_seed(seed)
    model, processor = BUILDERS[arch](tokenizer)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
