"""Chat templates written into a model's processor, keyed exactly like `model.template` (conf/model/*.yaml).

Every template marks assistant text with `{% generation %}` blocks so that `apply_chat_template(...,
return_assistant_tokens_mask=True)` yields the loss mask from the rendered text itself, never from re-splitting
strings: the supervised tokens are exactly each assistant turn plus the token that ends it. Message content may be
a string or a list of parts (`{"type": "image"}` / `{"type": "text", ...}`); an image part renders as the processor's
`<image>` placeholder, which the processor then expands to the projector's token count.

`native` keeps the LLM tokenizer's (or the HF VLM checkpoint's) own template; it must have generation blocks, or every
sample is refused as all-masked (loudly, never as silent loss-0 samples).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vlmtune.registry import Registry

# Jinja's whitespace control ({%- -%}) would eat literal newlines next to tags, so newlines are printed explicitly.
_NL = "{{ '\\n' }}"
_SP = "{{ ' ' }}"  # likewise for spaces next to tags


def _content(image: str = "<image>") -> str:
    """Renders a message's content: plain strings pass through; parts render text verbatim and images as `image`."""
    return (
        "{%- if message['content'] is string -%}{{ message['content'] }}"
        "{%- else -%}{%- for part in message['content'] -%}"
        "{%- if part['type'] == 'image' -%}" + image + "{%- elif part['type'] == 'text' -%}{{ part['text'] }}"
        "{%- endif -%}{%- endfor -%}{%- endif -%}"
    )


_CONTENT = _content()
_BOS = "{%- if bos_token -%}{{ bos_token }}{%- endif -%}"
_EOS = "{{ eos_token }}"


@dataclass(frozen=True)
class Template:
    text: str  # the Jinja chat template
    end_of_turn: str | None  # the token that ends an assistant turn (generation stops there); None = the EOS token
    special_tokens: tuple[str, ...] = field(default=())  # markers added to a tokenizer that lacks them


def _chatml(content: str = _CONTENT, default_system: str | None = None) -> str:
    """chatml turns (`content` renders a message's parts); `default_system` is rendered when no system turn leads."""
    system = ("{%- if loop.first and message['role'] != 'system' -%}<|im_start|>system" + _NL + default_system +
              "<|im_end|>" + _NL + "{%- endif -%}") if default_system else ""
    return (
        "{%- for message in messages -%}" + system +
        "{%- if message['role'] == 'assistant' -%}"
        "<|im_start|>assistant" + _NL + "{% generation %}" + content + "<|im_end|>{% endgeneration %}" + _NL +
        "{%- else -%}"
        "<|im_start|>{{ message['role'] }}" + _NL + content + "<|im_end|>" + _NL +
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}<|im_start|>assistant" + _NL + "{%- endif -%}"
    )


CHATML = _chatml()

# Llama 3.x: header blocks, turns end with <|eot_id|>.
LLAMA3 = _BOS + (
    "{%- for message in messages -%}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>" + _NL + _NL +
    "{%- if message['role'] == 'assistant' -%}{% generation %}" + _CONTENT + "<|eot_id|>{% endgeneration %}"
    "{%- else -%}" + _CONTENT + "<|eot_id|>{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|start_header_id|>assistant<|end_header_id|>" + _NL + _NL + "{%- endif -%}"
)

# Vicuna v1.1 / LLaVA-1.5 (conv_vicuna_v1): "SYSTEM USER: q ASSISTANT: a</s>USER: ...".
_VICUNA_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives "
                  "helpful, detailed, and polite answers to the human's questions.")
VICUNA_V1 = _BOS + (
    "{%- if messages[0]['role'] == 'system' -%}{%- set message = messages[0] -%}" + _CONTENT + _SP +
    "{%- else -%}" + _VICUNA_SYSTEM + _SP + "{%- endif -%}"
    "{%- for message in messages if message['role'] != 'system' -%}"
    "{%- if message['role'] == 'user' -%}USER:" + _SP + _CONTENT + _SP +
    # The space after "ASSISTANT:" belongs to the answer, as LLaVA's inference prompt ends at the colon.
    "{%- else -%}ASSISTANT:{% generation %}" + _SP + _CONTENT + _EOS + "{% endgeneration %}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}ASSISTANT:{%- endif -%}"
)

# Mistral instruct (v0.3): "<s>[INST] q [/INST]a</s>"; a system message is prepended to the first user turn.
MISTRAL = _BOS + (
    "{%- set system = namespace(text='') -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{%- set system.text = message['content'] if message['content'] is string "
    "else message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('') -%}"
    "{%- elif message['role'] == 'user' -%}[INST]" + _SP + "{%- if system.text -%}{{ system.text }}" + _NL + _NL
    + "{%- set system.text = '' -%}{%- endif -%}" + _CONTENT + _SP + "[/INST]"
    "{%- else -%}{% generation %}" + _CONTENT + _EOS + "{% endgeneration %}{%- endif -%}"
    "{%- endfor -%}"
)

# Gemma 2/3: "<start_of_turn>user\nq<end_of_turn>\n<start_of_turn>model\na<end_of_turn>\n"; no system role, so a
# system message is prepended to the first user turn.
GEMMA = _BOS + (
    "{%- set system = namespace(text='') -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{%- set system.text = message['content'] if message['content'] is string "
    "else message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('') -%}"
    "{%- elif message['role'] == 'user' -%}<start_of_turn>user" + _NL +
    "{%- if system.text -%}{{ system.text }}" + _NL + _NL + "{%- set system.text = '' -%}{%- endif -%}"
    + _CONTENT + "<end_of_turn>" + _NL +
    "{%- else -%}<start_of_turn>model" + _NL + "{% generation %}" + _CONTENT + "<end_of_turn>{% endgeneration %}"
    + _NL + "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<start_of_turn>model" + _NL + "{%- endif -%}"
)

# Phi-3 / Phi-4-mini: "<|user|>\nq<|end|>\n<|assistant|>\na<|end|>\n".
PHI3 = (
    "{%- for message in messages -%}"
    "<|{{ message['role'] }}|>" + _NL +
    "{%- if message['role'] == 'assistant' -%}{% generation %}" + _CONTENT + "<|end|>{% endgeneration %}"
    "{%- else -%}" + _CONTENT + "<|end|>{%- endif -%}" + _NL +
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>" + _NL + "{%- endif -%}"
)

# LLaVA's `plain` for caption pretraining: the user turn (the image) as is, then the caption and EOS; no roles.
PLAIN = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}{% generation %}" + _CONTENT + _EOS + "{% endgeneration %}"
    + _NL + "{%- elif message['role'] == 'user' -%}" + _CONTENT + "{%- endif -%}"
    "{%- endfor -%}"
)

# The formats existing HF VLMs were trained with (`model=hf_vlm`; the prompt side matches each checkpoint's own chat
# template), with the end-of-turn token inside the generation block so that fine-tuning teaches the model to stop.

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
QWEN2_VL = _chatml(_content("<|vision_start|><|image_pad|><|vision_end|>"), "You are a helpful assistant.")

# PaliGemma: "<image>prefix\nsuffix<eos>"; its processor inserts <bos> after the image tokens and appends the "\n"
# that separates prefix and suffix to the prompt, so the prompt side renders without it. Single-turn only.
PALIGEMMA = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}" + _NL + "{% generation %}" + _CONTENT +
    "{{ eos_token }}{% endgeneration %}"
    "{%- else -%}" + _CONTENT + "{%- endif -%}"
    "{%- endfor -%}"
)

TEMPLATES: Registry[Template] = Registry("model.template")
TEMPLATES.add("chatml", Template(CHATML, "<|im_end|>", ("<|im_start|>", "<|im_end|>")))
TEMPLATES.add("llama3", Template(LLAMA3, "<|eot_id|>", ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")))
TEMPLATES.add("vicuna_v1", Template(VICUNA_V1, None))
TEMPLATES.add("mistral", Template(MISTRAL, None, ("[INST]", "[/INST]")))
TEMPLATES.add("gemma", Template(GEMMA, "<end_of_turn>", ("<start_of_turn>", "<end_of_turn>")))
TEMPLATES.add("phi3", Template(PHI3, "<|end|>", ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")))
TEMPLATES.add("plain", Template(PLAIN, None))
TEMPLATES.add("llava", Template(LLAVA, None))
TEMPLATES.add("llava_mistral", Template(LLAVA_MISTRAL, None, ("[INST]", "[/INST]")))
TEMPLATES.add("idefics3", Template(IDEFICS3, "<end_of_utterance>", ("<end_of_utterance>",)))
TEMPLATES.add("qwen2_vl", Template(QWEN2_VL, "<|im_end|>"))
TEMPLATES.add("paligemma", Template(PALIGEMMA, None))
TEMPLATES.add("native", Template("", None))  # the tokenizer's / checkpoint's own chat template (module docstring)
