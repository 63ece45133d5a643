"""A multi-turn conversation with a loaded VLM, answered greedily and streamed piece by piece.

`vlmtune chat` (a terminal) and `vlmtune serve` (a web page) both talk through this class, so both render the
checkpoint's own chat template exactly as `evaluate` and `predict` do (vlmtune.eval.generate): the same prompt, no
special tokens added by the tokenizer, greedy decoding, the same stop strings. A single question about one image
therefore gets the answer `evaluate` gives it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from threading import Thread
from typing import Any

from vlmtune.data.images import load_image
from vlmtune.eval.generate import cut_at_stop


def question_parts(question: str, images: int, position: str = "before") -> list[dict[str, Any]]:
    """A user turn's content parts: `<image>` placeholders in the question put the images there; without any,
    the images go `before` or `after` the question (place them as the training data did)."""
    from vlmtune.data.errors import DataError
    from vlmtune.data.formats import PLACEHOLDER, text_parts

    if PLACEHOLDER in question:
        if question.count(PLACEHOLDER) != images:
            raise DataError(f"the question has {question.count(PLACEHOLDER)} {PLACEHOLDER} placeholder(s) for "
                            f"{images} new image(s)", "placeholder_mismatch")
        return text_parts(question)
    image_parts = [{"type": "image", "text": None} for _ in range(images)]
    text = [{"type": "text", "text": question}]
    return image_parts + text if position == "before" else text + image_parts


class Conversation:
    """The turns so far and the images they show; `stream(question)` answers the next question."""

    def __init__(self, model, processor, *, max_new_tokens: int = 256, stop_strings: Sequence[str] = (),
                 image_position: str = "before"):
        self.image_position = image_position  # where new images go in a question without <image> placeholders
        self.model = model
        self.processor = processor
        self.max_new_tokens = max_new_tokens
        self.stop_strings = list(stop_strings)
        self.messages: list[dict[str, Any]] = []  # canonical messages (vlmtune.data.formats), as in evaluation
        self.images: list[Any] = []  # decoded images of the turns so far, in placeholder order
        self.pending: list[Any] = []  # images loaded since the last question: they go with the next one
        self.current: Any = None  # the image last loaded: /clear shows it again with the next question
        self.last_answer: str | None = None  # the latest answer, cut and stripped as kept in the history

    def add_image(self, source: Any, where: str = "image") -> None:
        """Attach an image (a path, bytes or PIL image) to the next question; a bad one raises DataError."""
        image = load_image(source, where)
        self.pending.append(image)
        self.current = image

    def clear(self) -> None:
        """Forget every turn; the image last loaded goes with the next question again."""
        self.messages, self.images = [], []
        self.pending = [] if self.current is None else [self.current]

    def stream(self, question: str) -> Iterator[str]:
        """Answer `question`, yielding the text as it is generated; the answer joins the history at the end.

        The pieces are what transformers' TextIteratorStreamer decodes; the answer kept (and given back by
        `answer`) is cut at the stop strings and stripped like an evaluation prediction.
        """
        from transformers import TextIteratorStreamer

        turn = question_parts(question, len(self.pending), self.image_position)
        messages = [*self.messages, {"role": "user", "content": turn}]
        images = [*self.images, *self.pending]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = self.processor(text=[text], images=images or None, return_tensors="pt",
                                add_special_tokens=False).to(self.model.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        streamer = TextIteratorStreamer(self.processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs = {**inputs, "streamer": streamer, "do_sample": False, "max_new_tokens": self.max_new_tokens,
                  "pad_token_id": self.processor.tokenizer.pad_token_id}
        worker = Thread(target=self._generate, kwargs=kwargs, daemon=True)
        worker.start()
        pieces = []
        for piece in streamer:
            pieces.append(piece)
            yield piece
        worker.join()
        if self._error is not None:
            raise self._error
        answer = cut_at_stop("".join(pieces), self.stop_strings).strip()
        self.messages = [*messages, {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
        self.images, self.pending = images, []
        self.last_answer = answer

    _error: BaseException | None = None

    def _generate(self, **kwargs) -> None:
        import torch

        self._error = None
        try:
            with torch.no_grad():
                self.model.generate(**kwargs)
        except BaseException as error:  # re-raised in the caller's thread once the streamer has ended
            self._error = error
            kwargs["streamer"].end()

    def answer(self, question: str) -> str:
        """The whole answer at once (what `stream` yields, cut and stripped)."""
        for _ in self.stream(question):
            pass
        return self.last_answer
