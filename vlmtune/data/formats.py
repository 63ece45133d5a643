"""Sample formats -> one canonical sample, keyed exactly like `data.format`.

Canonical sample: `{"id", "messages": [{"role", "content": [parts]}], "images": [...], "kind"}` where a part is
`{"type": "text", "text": ...}` or `{"type": "image", "text": None}` (both keys: one Arrow schema), images are paths
(already joined with the image root), bytes or PIL images, in placeholder order, and `kind` is an optional question
type that evaluation reports accuracy per. The chat template renders exactly this; the processor expands each image
part to the projector's token count.

- `llava`: `{"id", "image": path | [paths], "conversations": [{"from": "human"|"gpt"|"system", "value": "..."}]}`
  with `<image>` placeholders in the text.
- `sharegpt`: LLaMA-Factory's ShareGPT: `{"conversations": [{"from", "value"}], "images": [...], "system": "..."}`.
- `messages`: OpenAI / Hugging Face chat: `{"messages": [{"role", "content": "text" | [parts]}], "images": [...]}`,
  where parts are `{"type": "text", "text"}` and `{"type": "image"}` (optionally carrying the image itself under
  "image" / "path" / "url", or OpenAI's `{"type": "image_url", "image_url": {"url"}}`); string content may use
  `<image>` placeholders instead.
- `vqa`: one question per record: `{"id", "image": path | [paths], "question": "...", "answer": "..."}`; the images
  go before the question unless it holds `<image>` placeholders. `answer` is optional for `vlmtune predict`.
  `auto` takes a record with `question` and `image` (or `images`) for vqa.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from vlmtune.data.errors import DataError
from vlmtune.registry import Registry

PLACEHOLDER = "<image>"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
         "model": "assistant"}

Converter = Callable[[dict[str, Any], str], dict[str, Any]]
FORMATS: Registry[Converter] = Registry("data.format")


def text_parts(text: str) -> list[dict[str, Any]]:
    """Split text at `<image>` placeholders into text and image parts."""
    parts: list[dict[str, Any]] = []
    for i, chunk in enumerate(text.split(PLACEHOLDER)):
        if i > 0:
            parts.append({"type": "image", "text": None})
        if chunk:
            parts.append({"type": "text", "text": chunk})
    return parts


def _as_list(value) -> list:
    return [] if value is None else list(value) if isinstance(value, list | tuple) else [value]


def turns_to_messages(turns, where: str) -> list[dict[str, Any]]:
    """LLaVA / ShareGPT `{"from", "value"}` turns -> messages."""
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{where}: 'conversations' must be a non-empty list of {{from, value}} turns", "bad_format")
    messages = []
    for turn in turns:
        role = ROLES.get(turn.get("from", "")) if isinstance(turn, dict) else None
        if role is None or not isinstance(turn.get("value"), str):
            raise DataError(f"{where}: each turn needs 'from' in {sorted(ROLES)} and a string 'value'; got {turn!r}",
                            "bad_format")
        messages.append({"role": role, "content": text_parts(turn["value"])})
    return messages


@FORMATS.register("llava")
def from_llava(record: dict[str, Any], where: str) -> dict[str, Any]:
    return {"messages": turns_to_messages(record.get("conversations"), where),
            "images": _as_list(record.get("image"))}


@FORMATS.register("sharegpt")
def from_sharegpt(record: dict[str, Any], where: str) -> dict[str, Any]:
    messages = turns_to_messages(record.get("conversations"), where)
    if isinstance(record.get("system"), str) and record["system"]:
        messages.insert(0, {"role": "system", "content": text_parts(record["system"])})
    return {"messages": messages, "images": _as_list(record.get("images"))}


def _inline_image(part: dict[str, Any]):
    """The image an HF/OpenAI image part carries itself, if any."""
    for key in ("image", "path", "url"):
        if part.get(key) is not None:
            return part[key]
    url = part.get("image_url")
    return url.get("url") if isinstance(url, dict) else url


@FORMATS.register("messages")
def from_messages(record: dict[str, Any], where: str) -> dict[str, Any]:
    raw = record.get("messages")
    if not isinstance(raw, list) or not raw:
        raise DataError(f"{where}: 'messages' must be a non-empty list of {{role, content}}", "bad_format")
    messages, inline = [], []
    for message in raw:
        role = ROLES.get(message.get("role", "")) if isinstance(message, dict) else None
        if role is None:
            raise DataError(f"{where}: each message needs 'role' in {sorted(ROLES)}; got {message!r}", "bad_format")
        content = message.get("content")
        if isinstance(content, str):
            parts = text_parts(content)
        elif isinstance(content, list):
            parts = []
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text" and isinstance(part.get("text"), str):
                    parts.extend(text_parts(part["text"]))
                elif kind in ("image", "image_url"):
                    parts.append({"type": "image", "text": None})
                    if _inline_image(part) is not None:
                        inline.append(_inline_image(part))
                else:
                    raise DataError(f"{where}: unsupported content part {part!r} (text and image parts only)",
                                    "bad_format")
        else:
            raise DataError(f"{where}: message content must be a string or a list of parts; got {content!r}",
                            "bad_format")
        messages.append({"role": role, "content": parts})
    images = _as_list(record.get("images"))
    if inline and images:
        raise DataError(f"{where}: images are given both inside the messages and in 'images'; use one", "bad_format")
    return {"messages": messages, "images": images or inline}


@FORMATS.register("vqa")
def from_vqa(record: dict[str, Any], where: str) -> dict[str, Any]:
    question, images = record.get("question"), _as_list(record.get("image", record.get("images")))
    if not isinstance(question, str) or not question.strip():
        raise DataError(f"{where}: 'question' must be a non-empty string; got {question!r}", "bad_format")
    parts = text_parts(question)
    if PLACEHOLDER not in question:
        parts = [{"type": "image", "text": None} for _ in images] + parts
    messages = [{"role": "user", "content": parts}]
    if record.get("answer") is not None:
        messages.append({"role": "assistant", "content": text_parts(str(record["answer"]))})
    return {"messages": messages, "images": images}


def detect_format(record: dict[str, Any], where: str) -> str:
    """The format of one record by its keys (`data.format=auto`)."""
    if "messages" in record:
        return "messages"
    if "conversations" in record:
        return "sharegpt" if "images" in record or "system" in record else "llava"
    if "question" in record and ("image" in record or "images" in record):  # without an image: set data.format=vqa
        return "vqa"
    raise DataError(f"{where}: cannot tell the format of a record with keys {sorted(record)}: expected "
                    "'conversations' (llava/sharegpt), 'messages' or 'question' with 'image' (vqa); rename the "
                    "columns or set data.format",
                    "bad_format")


def _check_turns(messages: list[dict[str, Any]], where: str, open_question: bool = False) -> None:
    """Optional system first, then user/assistant alternating, starting with user and ending with the assistant
    (or, with `open_question`, with the user's question still to answer)."""
    roles = [m["role"] for m in messages]
    body = roles[1:] if roles[:1] == ["system"] else roles
    expected = ["user", "assistant"] * (len(body) // 2 + 1)
    if not body or body != expected[: len(body)] or (body[-1] != "assistant" and not open_question):
        raise DataError(f"{where}: roles {roles} are out of order: expected an optional system turn, then user and "
                        "assistant turns alternating, ending with the assistant's answer"
                        + (" or the user's question" if open_question else ""), "role_order")
    for message in messages:
        if message["role"] == "assistant" and not any(p["type"] == "text" and p["text"].strip()
                                                      for p in message["content"]):
            raise DataError(f"{where}: an assistant turn is empty: there is nothing to learn from it",
                            "empty_answer")
        if message["role"] == "assistant" and any(p["type"] == "image" for p in message["content"]):
            raise DataError(f"{where}: an assistant turn holds an <image> placeholder; images go in user turns",
                            "placeholder_mismatch")


def resolve_image(image, image_root: Path):
    """Join a relative path with the image root; leave bytes, PIL images and absolute paths alone."""
    if isinstance(image, str) and not Path(image).is_absolute() and "://" not in image:
        return str(image_root / image)
    return image


def to_sample(record: Any, fmt: str, where: str, image_root: Path, open_question: bool = False) -> dict[str, Any]:
    """One raw record -> a canonical sample, or a DataError naming `where` (file and sample id) and the problem.

    `open_question` also accepts a conversation that ends with the user's question (input for `predict`)."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: a sample must be a JSON object, got {type(record).__name__}", "bad_format")
    sample_id = record.get("id", record.get("sample_id"))
    where = f"{where}, sample {sample_id!r}" if sample_id is not None else where
    converted = FORMATS.get(detect_format(record, where) if fmt == "auto" else fmt)(record, where)
    _check_turns(converted["messages"], where, open_question)
    placeholders = sum(p["type"] == "image" for m in converted["messages"] for p in m["content"])
    if placeholders != len(converted["images"]):
        raise DataError(f"{where}: {placeholders} {PLACEHOLDER} placeholder(s) but {len(converted['images'])} "
                        "image(s): every image needs exactly one placeholder where it goes", "placeholder_mismatch")
    images = [resolve_image(image, image_root) for image in converted["images"]]
    for image in images:
        if isinstance(image, str) and "://" in image:
            raise DataError(f"{where}: image {image} is a URL; download images first (vlmtune never fetches "
                            "data during a run)", "missing_image")
    return {"id": str(sample_id) if sample_id is not None else None, "messages": converted["messages"],
            "images": images, "kind": record.get("kind")}
