"""`vlmtune serve`: a Gradio page to upload an image, ask, watch the answer stream and go on talking, switching
between the checkpoints of a run directory.

Answers come from the same `Conversation` as `vlmtune chat`, so one question about one image gets chat's (and
evaluate's) answer. One model is held in memory at a time; each browser session keeps its own conversation.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from vlmtune.infer.conversation import Conversation

CHECKPOINT_FILES = ("config.json", "adapter_config.json")


def find_checkpoints(root: Path) -> dict[str, Path]:
    """{name relative to `root`: directory} of every VLM checkpoint under `root` (itself included): directories
    with a config.json or adapter_config.json, leaving out hidden ones, a trainer's resumable step checkpoints, the
    folders inside a checkpoint (an adapter's vision/ part) and models that do not answer questions about images
    (a contrastive run's dual encoder and vision tower)."""
    found: dict[str, Path] = {}
    for marker in sorted(p for name in CHECKPOINT_FILES for p in root.rglob(name)):
        directory = marker.parent
        relative = directory.relative_to(root)
        if any(part.startswith(".") or part in ("trainer", "wandb") for part in relative.parts):
            continue
        if marker.name == "config.json" and not _answers_about_images(marker):
            continue
        if any(directory.is_relative_to(other) for other in found.values()):
            continue
        found[str(relative) if relative.parts else root.name] = directory
    return found


def _answers_about_images(config: Path) -> bool:
    """Whether the config.json is of a model AutoModelForImageTextToText loads (a `vlmtune` one included)."""
    import json

    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    model_type = json.loads(config.read_text()).get("model_type")
    return model_type == "vlmtune" or model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES


class Models:
    """The checkpoint in memory (one at a time: switching frees the previous one)."""

    def __init__(self, checkpoints: dict[str, Path], device, answer_cfg):
        self.checkpoints, self.device, self.answer_cfg = checkpoints, device, answer_cfg
        self.name: str | None = None
        self.loaded: tuple[Any, Any] | None = None

    def conversation(self, name: str) -> Conversation:
        if name != self.name:
            from vlmtune.model.checkpoint import load_vlm

            self.loaded = None  # let the previous model go before the next one loads
            self.loaded = load_vlm(self.checkpoints[name], device=self.device)
            self.name = name
        model, processor = self.loaded
        conversation = Conversation(model, processor, max_new_tokens=self.answer_cfg.max_new_tokens,
                                    stop_strings=self.answer_cfg.stop_strings,
                                    image_position=self.answer_cfg.image_position)
        conversation.checkpoint, conversation.image_path = name, None
        return conversation


def build_app(models: Models, first: str):
    """The page: checkpoint list, image, conversation, question box, Send and Clear, and a status line."""
    import gradio as gr

    def respond(question: str, image_path: str | None, name: str, history: list, conversation):
        if not question.strip():
            yield history, question, conversation, "Type a question first."
            return
        if conversation is None or conversation.checkpoint != name:
            conversation, history = models.conversation(name), []
        if image_path and image_path != conversation.image_path:  # a new upload goes with this question
            conversation.add_image(image_path, where="uploaded image")
            conversation.image_path = image_path
        history = [*history, {"role": "user", "content": question}, {"role": "assistant", "content": ""}]
        started = time.perf_counter()
        for piece in conversation.stream(question):
            history[-1]["content"] += piece
            yield history, "", conversation, "answering..."
        history[-1]["content"] = conversation.last_answer
        yield history, "", conversation, f"answered by {name} in {time.perf_counter() - started:.2f} s"

    def clear(conversation):
        if conversation is not None:
            conversation.clear()
        return [], conversation, "conversation cleared"

    def switch(name: str):
        models.conversation(name)  # load now, so the first answer does not wait for it
        return [], None, f"loaded {name}"

    with gr.Blocks(title="vlmtune") as app:
        gr.Markdown("## vlmtune: talk to a checkpoint")
        checkpoint = gr.Dropdown(choices=list(models.checkpoints), value=first, label="checkpoint",
                                 elem_id="checkpoint")
        with gr.Row():
            image = gr.Image(type="filepath", label="image", sources=["upload"], elem_id="image", height=320)
            with gr.Column():
                chat = gr.Chatbot(label="conversation", elem_id="chat", height=320)
                question = gr.Textbox(label="question", placeholder="Ask about the image, then press Enter",
                                      elem_id="question")
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="send")
                    reset = gr.Button("Clear", elem_id="clear")
        status = gr.Markdown(f"ready: {first}", elem_id="status")
        conversation = gr.State(None)
        inputs, outputs = [question, image, checkpoint, chat, conversation], [chat, question, conversation, status]
        send.click(respond, inputs, outputs)
        question.submit(respond, inputs, outputs)
        reset.click(clear, [conversation], [chat, conversation, status])
        checkpoint.change(switch, [checkpoint], [chat, conversation, status])
    return app
