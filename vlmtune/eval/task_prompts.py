"""One benchmark document -> one evaluation record: the rendered question (images first, or at MMMU's `<image i>`
tags), the images, the target and the options, as `EvalTaskConfig` describes them (lmms-eval's doc_to_visual,
doc_to_text, doc_to_choice and doc_to_target, as configuration instead of per-task functions)."""

from __future__ import annotations

import ast
import base64
import binascii
import math
import re
from pathlib import Path
from typing import Any

from vlmtune.data.errors import DataError
from vlmtune.data.images import check_image_header

_IMAGE_TAG = re.compile(r"<image (\d+)>")
_DATA_URL = re.compile(r"^data:image/[\w.+-]+;base64,")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def present(value: Any) -> bool:
    """False for the ways benchmark tables leave a cell empty: None, NaN, "" and pandas' "nan" string."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return not (isinstance(value, str) and value.strip() in ("", "nan"))


def resolve_image(value: Any, where: str, root: Path) -> tuple[Any, str]:
    """(something `load_image` opens, a JSON-safe reference) for a PIL image, `{"bytes", "path"}` dict, bytes, a path
    (relative to `root`) or base64 text (VLMEvalKit TSVs, data URLs)."""
    from PIL import Image

    if isinstance(value, Image.Image):
        return value, where
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, bytes):
        check_image_header(value, where)
        return value, where
    if isinstance(value, str) and value:
        path = Path(value) if Path(value).is_absolute() else root / value
        if len(value) < 4096 and path.is_file():
            check_image_header(str(path), f"{where} ({path})")
            return str(path), str(path)
        try:
            data = base64.b64decode(_DATA_URL.sub("", value), validate=True)
        except (binascii.Error, ValueError):
            data = b""
        if data:
            check_image_header(data, f"{where} (base64)")
            return data, f"{where} (base64)"
        raise DataError(f"{where}: image file {path} does not exist and the text is not base64 image data; fix the "
                        "path or set eval.task.image_root", "missing_image")
    raise DataError(f"{where}: no image ({type(value).__name__}); every doc of this task needs one", "missing_image")


def doc_choices(task, row: dict[str, Any], where: str) -> dict[str, str] | None:
    """letter -> option text, or None for a doc without options (an open MMMU question, any non-MC task)."""
    columns = list(task.doc_to_choice)
    if not columns:
        return None
    if len(columns) > 1:  # one column per letter (MMBench A..E); an item with 2 options leaves C..E empty
        options = {column: str(row[column]) for column in columns if present(row.get(column))}
        return options or None
    value = row[columns[0]]
    if isinstance(value, str):  # MMMU keeps the list as its Python repr
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise DataError(f"{where}: column {columns[0]!r} holds {value[:80]!r}, not a list of options",
                            "bad_options") from None
    if not isinstance(value, list | tuple):
        raise DataError(f"{where}: column {columns[0]!r} should hold a list of options, not {type(value).__name__}",
                        "bad_options")
    return {LETTERS[i]: str(option) for i, option in enumerate(value)} or None


def doc_target(value: Any, choices: dict[str, str] | None, where: str, column: str) -> str | list[str]:
    """A string, a list of reference answers (VQAv2's answer dicts give their `answer`), or a letter for an option
    index (ScienceQA)."""
    if isinstance(value, int) and not isinstance(value, bool) and choices is not None:
        if not 0 <= value < len(choices):
            raise DataError(f"{where}: answer index {value} ({column!r}) is outside the {len(choices)} options",
                            "bad_target")
        return LETTERS[value]
    if isinstance(value, list | tuple):
        answers = [item["answer"] if isinstance(item, dict) and "answer" in item else item for item in value]
        if answers and all(isinstance(a, str) for a in answers):
            return list(answers)
    elif present(value) and isinstance(value, str | int | float):
        return str(value)
    raise DataError(f"{where}: column {column!r} holds {value!r}; expected an answer string, a non-empty list of "
                    "answers or an option index", "bad_target")


def _tagged_parts(task, text: str, row: dict[str, Any], where: str, root: Path):
    """MMMU: every `<image i>` tag becomes the image in column image_i, where the tag stands."""
    parts, images, refs = [], [], []
    for i, chunk in enumerate(_IMAGE_TAG.split(text)):
        if i % 2 == 0:
            if chunk:
                parts.append({"type": "text", "text": chunk})
            continue
        column = f"image_{chunk}"
        if column not in task.doc_to_visual or not present(row.get(column)):
            raise DataError(f"{where}: the text refers to <image {chunk}> but column {column!r} is "
                            f"{'not in eval.task.doc_to_visual' if column not in task.doc_to_visual else 'empty'}",
                            "missing_image")
        image, ref = resolve_image(row[column], f"{where}, column {column!r}", root)
        parts.append({"type": "image", "text": None})
        images.append(image)
        refs.append(ref)
    return parts, images, refs


def doc_record(task, row: dict[str, Any], index: int, where: str, root: Path) -> dict[str, Any]:
    """The evaluation record of one doc: `id`, `messages` (user prompt + the target as the assistant turn),
    `images`, `image_refs` (JSON-safe), `kind` (the breakdown value), `target` and `choices`."""
    doc_id = str(row[task.doc_id]) if task.doc_id else str(index)
    choices = doc_choices(task, row, where)
    target = doc_target(row[task.doc_to_target], choices, where, task.doc_to_target)
    hint = row[task.hint] if task.hint else None
    context = task.hint_template.format(hint=hint) if present(hint) else ""
    options = ""
    if choices:
        options = task.options_template.format(options="\n".join(f"{k}. {v}" for k, v in choices.items()))
    post = task.post_prompt if choices or task.open_post_prompt is None else task.open_post_prompt
    question = row[task.doc_to_text] if task.doc_to_text else ""  # captioning: the prompt is pre/post_prompt
    text = f"{task.pre_prompt}{context}{question}{options}{post}"
    if task.image_tags:
        parts, images, refs = _tagged_parts(task, text, row, where, root)
    else:  # LLaVA's layout: the images, then "\n" and the question
        resolved = [resolve_image(row[c], f"{where}, column {c!r}", root) for c in task.doc_to_visual]
        images, refs = [image for image, _ in resolved], [ref for _, ref in resolved]
        parts = [{"type": "image", "text": None} for _ in images]
        parts.append({"type": "text", "text": ("\n" if images else "") + text})
    shown = target if isinstance(target, str) else target[0]
    messages = [{"role": "user", "content": parts},
                {"role": "assistant", "content": [{"type": "text", "text": shown}]}]
    kind = str(row[task.breakdown]) if task.breakdown else None
    return {"id": doc_id, "messages": messages, "images": images, "image_refs": refs, "kind": kind,
            "target": target, "choices": choices}
