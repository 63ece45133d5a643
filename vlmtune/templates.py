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
# Renders a message's content: plain strings pass through; parts render text verbatim and images as <image>.
_CONTENT = (
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}<image>{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
)

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

TEMPLATES: Registry[str] = Registry("model.template")
TEMPLATES.add("chatml", CHATML)

# The token that ends an assistant turn, per template: generation stops there.
END_OF_TURN = {"chatml": "<|im_end|>"}
