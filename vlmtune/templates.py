"""Chat templates written into a model's processor, keyed exactly like conf `model.template`.

Every template marks assistant text with `{% generation %}` blocks so that `apply_chat_template(...,
return_assistant_tokens_mask=True)` yields the loss mask from the rendered text itself, never from re-splitting
strings. Message content may be a string or a list of parts (`{"type": "image"}` / `{"type": "text", ...}`);
an image part renders as the processor's `<image>` placeholder, which the processor then expands to the projector's
token count.
"""

from __future__ import annotations

from vlmtune.registry import Registry

# Jinja's whitespace control ({%- -%}) would eat literal newlines next to tags, so newlines are printed explicitly.
_NL = "{{ '\\n' }}"


def _content(image: str = "<image>") -> str:
    """Renders a message's content: plain strings pass through; parts render text verbatim and images as `image`."""
    return (
        "{%- if message['content'] is string -%}{{ message['content'] }}"
        "{%- else -%}{%- for part in message['content'] -%}"
        "{%- if part['type'] == 'image' -%}" + image + "{%- elif part['type'] == 'text' -%}{{ part['text'] }}"
        "{%- endif -%}{%- endfor -%}{%- endif -%}"
    )


_CONTENT = _content()

CHATML = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "<|im_start|>assistant" + _NL + "{% generation %}" + _CONTENT + "<|im_end|>{% endgeneration %}" + _NL +
    "{%- else -%}"
    "<|im_start|>{{ message['role'] }}" + _NL + _CONTENT + "<|im_end|>" + _NL +
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|im_start|>assistant" + _NL + "{%- endif -%}"
)

# The formats existing HF VLMs were trained with (the prompt side matches each checkpoint's own chat template), with
# the end-of-turn token inside the generation block so that fine-tuning teaches the model to stop; a BOS token, where
# the tokenizer has one, is rendered by the template (TRL's collator and evaluation tokenize without adding any).
_BOS = "{%- if bos_token -%}{{ bos_token }}{%- endif -%}"
_SP = "{{ ' ' }}"  # a literal space next to a {%- -%} tag would be eaten too

# LLaVA-1.5 (Vicuna v1): "USER: <image>\nQ ASSISTANT: A</s>" (llava-hf/llava-1.5-*-hf).
LLAVA = (
    _BOS + "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "ASSISTANT:{% generation %}" + _SP + _CONTENT + "{{ eos_token }}{% endgeneration %}"
    "{%- elif message['role'] == 'user' -%}USER:" + _SP + _CONTENT + _SP +
    "{%- else -%}" + _CONTENT + _SP + "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}ASSISTANT:{%- endif -%}"
)

# LLaVA-NeXT on Mistral: "[INST] <image>\nQ [/INST] A</s>" (llava-hf/llava-v1.6-mistral-7b-hf).
LLAVA_MISTRAL = (
    _BOS + "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}{% generation %}" + _SP + _CONTENT + "{{ eos_token }}{% endgeneration %}"
    "{%- elif message['role'] == 'user' -%}[INST]" + _SP + _CONTENT + _SP + "[/INST]"
    "{%- else -%}" + _CONTENT + _NL + _NL + "{%- endif -%}"
    "{%- endfor -%}"
)

# Idefics3 / SmolVLM: "<|im_start|>User:<image>Q<end_of_utterance>\nAssistant: A<end_of_utterance>\n"
# (HuggingFaceTB/SmolVLM-*-Instruct; "User:" takes no space when the turn starts with an image).
IDEFICS3 = (
    "<|im_start|>{%- for message in messages -%}"
    "{{ message['role'] | capitalize }}"
    "{%- if message['role'] == 'assistant' -%}"
    ":{% generation %}" + _SP + _CONTENT + "<end_of_utterance>{% endgeneration %}" + _NL +
    "{%- else -%}"
    "{%- if message['content'] is not string and message['content'][0]['type'] == 'image' -%}:"
    "{%- else -%}{{ ': ' }}{%- endif -%}" + _CONTENT + "<end_of_utterance>" + _NL +
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}Assistant:{%- endif -%}"
)

# Qwen2-VL / Qwen2.5-VL: chatml with a default system turn and <|vision_start|><|image_pad|><|vision_end|> images.
_QWEN_CONTENT = _content("<|vision_start|><|image_pad|><|vision_end|>")
QWEN2_VL = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "<|im_start|>system" + _NL + "You are a helpful assistant.<|im_end|>" + _NL +
    "{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "<|im_start|>assistant" + _NL + "{% generation %}" + _QWEN_CONTENT + "<|im_end|>{% endgeneration %}" + _NL +
    "{%- else -%}"
    "<|im_start|>{{ message['role'] }}" + _NL + _QWEN_CONTENT + "<|im_end|>" + _NL +
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|im_start|>assistant" + _NL + "{%- endif -%}"
)

# PaliGemma: "<image>prefix\nsuffix<eos>"; its processor inserts <bos> after the image tokens and appends the "\n"
# that separates prefix and suffix to the prompt, so the prompt side renders without it. Single-turn only.
PALIGEMMA = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}" + _NL + "{% generation %}" + _CONTENT +
    "{{ eos_token }}{% endgeneration %}"
    "{%- else -%}" + _CONTENT + "{%- endif -%}"
    "{%- endfor -%}"
)

TEMPLATES: Registry[str] = Registry("model.template")
TEMPLATES.add("chatml", CHATML)
TEMPLATES.add("llava", LLAVA)
TEMPLATES.add("llava_mistral", LLAVA_MISTRAL)
TEMPLATES.add("idefics3", IDEFICS3)
TEMPLATES.add("qwen2_vl", QWEN2_VL)
TEMPLATES.add("paligemma", PALIGEMMA)

# The token that ends an assistant turn, per template: generation stops there. None: the tokenizer's EOS token.
END_OF_TURN = {"chatml": "<|im_end|>", "llava": None, "llava_mistral": None, "idefics3": "<end_of_utterance>",
               "qwen2_vl": "<|im_end|>", "paligemma": None}
