"""Preference pairs for DPO: an image, a prompt, a preferred (`chosen`) and a dispreferred (`rejected`) answer.

On disk (`.json` list, `.jsonl`, `.parquet` or a `datasets` folder), one record per pair, LLaVA-like:

    {"id": "pref-train-00000", "image": "images/train_00000.png",
     "prompt": [{"from": "human", "value": "What color is the circle?\\n<image>"}],
     "chosen": "red", "rejected": "blue", "kind": "color_of_shape"}

- `image`: a path (relative to `data.image_root`, default the data file's folder), bytes, or a list of them;
  `images` is accepted too. One `<image>` placeholder per image, in order.
- `prompt`: the conversation up to the answer, ending with the user's turn: LLaVA turns (`from` human/gpt/system,
  `value`), OpenAI / HF messages (`role`, `content` as text or parts, as in formats.py), or a plain string (one user
  turn).
- `chosen` / `rejected`: the two answers, each a string or a one-message assistant list (TRL's conversational form);
  they must differ.
- `id`, `kind`: optional; `kind` is the question type that margins are reported per.

`vlmtune synth` writes `preferences_train.json` / `preferences_test.json` in this format (vlmtune/data/shapes.py).
Reading gives canonical pairs `{"id", "prompt": messages, "chosen": [message], "rejected": [message], "images",
"kind"}` (messages as in formats.py), i.e. TRL's conversational preference format, which `to_preference_dataset`
turns into the `datasets.Dataset` that `DPOTrainer`'s vision collator renders with the model's chat template. A bad
record gives a `DataError` naming the file, the record and the problem (`data.on_error=raise`), or is skipped and
counted (`skip`), like SFT data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlmtune.data.errors import DataError, DataReport
from vlmtune.data.formats import PLACEHOLDER, from_messages, resolve_image, turns_to_messages
from vlmtune.data.images import MAX_PIXELS, load_image
from vlmtune.data.records import read_samples
from vlmtune.errors import ConfigError


def _messages(value: Any, where: str, what: str) -> list[dict[str, Any]]:
    """A string, LLaVA turns or HF messages -> canonical messages."""
    if isinstance(value, str):
        value = [{"role": "user" if what == "prompt" else "assistant", "content": value}]
    if not isinstance(value, list) or not value or not all(isinstance(turn, dict) for turn in value):
        raise DataError(f"{where}: '{what}' must be a string or a non-empty list of turns; got {value!r}",
                        "bad_format")
    if "from" in value[0]:
        return turns_to_messages(value, f"{where} ('{what}')")
    return from_messages({"messages": value}, f"{where} ('{what}')")["messages"]


def _answer(value: Any, where: str, what: str) -> list[dict[str, Any]]:
    messages = _messages(value, where, what)
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        raise DataError(f"{where}: '{what}' must be one assistant answer; got roles {[m['role'] for m in messages]}",
                        "bad_format")
    parts = messages[0]["content"]
    if any(part["type"] == "image" for part in parts):
        raise DataError(f"{where}: '{what}' holds an {PLACEHOLDER} placeholder; images go in the prompt",
                        "placeholder_mismatch")
    if not "".join(part["text"] for part in parts).strip():
        raise DataError(f"{where}: '{what}' is empty: a preference needs two non-empty answers", "empty_answer")
    return messages


def _text(messages: list[dict[str, Any]]) -> str:
    return "".join(part["text"] or "" for part in messages[0]["content"] if part["type"] == "text").strip()


def to_preference(record: Any, where: str, image_root: Path) -> dict[str, Any]:
    """One raw record -> a canonical preference pair, or a DataError naming `where` (file, record) and the problem."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: a preference pair must be a JSON object, got {type(record).__name__}", "bad_format")
    sample_id = record.get("id", record.get("sample_id"))
    where = f"{where}, sample {sample_id!r}" if sample_id is not None else where
    missing = [key for key in ("prompt", "chosen", "rejected") if key not in record]
    if missing:
        raise DataError(f"{where}: a preference pair needs 'prompt', 'chosen' and 'rejected'; missing {missing} "
                        f"(keys: {sorted(record)})", "bad_format")
    prompt = _messages(record["prompt"], where, "prompt")
    roles = [m["role"] for m in prompt]
    body = roles[1:] if roles[:1] == ["system"] else roles
    if not body or body != ["user", "assistant"] * (len(body) // 2) + ["user"]:
        raise DataError(f"{where}: prompt roles {roles} are out of order: expected an optional system turn, then user "
                        "and assistant turns alternating, ending with the user's turn that the answers reply to",
                        "role_order")
    chosen, rejected = _answer(record["chosen"], where, "chosen"), _answer(record["rejected"], where, "rejected")
    if _text(chosen) == _text(rejected):
        raise DataError(f"{where}: 'chosen' and 'rejected' are the same answer ({_text(chosen)!r}): nothing to prefer",
                        "identical_answers")
    raw_images = record.get("image", record.get("images"))
    images = [] if raw_images is None else raw_images if isinstance(raw_images, list) else [raw_images]
    placeholders = sum(part["type"] == "image" for message in prompt for part in message["content"])
    if placeholders != len(images):
        raise DataError(f"{where}: {placeholders} {PLACEHOLDER} placeholder(s) in the prompt but {len(images)} "
                        "image(s): every image needs exactly one placeholder where it goes", "placeholder_mismatch")
    images = [resolve_image(image, image_root) for image in images]
    for image in images:
        if isinstance(image, str) and "://" in image:
            raise DataError(f"{where}: image {image} is a URL; download images first (vlmtune never fetches data "
                            "during a run)", "missing_image")
    return {"id": str(sample_id) if sample_id is not None else None, "prompt": prompt, "chosen": chosen,
            "rejected": rejected, "images": images, "kind": record.get("kind")}


def read_preferences(
    source: str | Path,
    *,
    image_root: str | Path | None = None,
    on_error: str = "raise",
    limit: int | None = None,
    split: str = "train",
    verify_images: str = "header",
    max_image_pixels: int = MAX_PIXELS,
    report: DataReport | None = None,
) -> list[dict[str, Any]]:
    """Canonical preference pairs from `source`; bad ones raise or (on_error=skip) are counted in `report`."""
    return read_samples(source, image_root=image_root, on_error=on_error, limit=limit, split=split,
                        verify_images=verify_images, max_image_pixels=max_image_pixels, report=report,
                        convert=to_preference)


def read_preference_split(data, which: str, report: DataReport | None = None) -> list[dict[str, Any]]:
    """The `train` or `test` preference pairs a DataConfig names; options that only SFT data supports are refused."""
    unsupported = {"mixture": bool(data.mixture), "streaming": data.streaming, "packing": data.packing,
                   "group_by_length": data.group_by_length, "blank_images": data.blank_images,
                   "max_length": data.max_length is not None}
    if any(unsupported.values()):
        raise ConfigError(f"data.{next(k for k, v in unsupported.items() if v)} is not supported for preference data "
                          "(dpo): leave it at its default")
    if data.format not in ("auto", "preference"):
        raise ConfigError(f"data.format={data.format!r}: preference data has its own format (prompt / chosen / "
                          "rejected, see vlmtune/data/preferences.py); leave data.format=auto")
    source = data.train if which == "train" else data.test
    if source is None:
        raise ConfigError(f"data.{which} is not set: give a preference file (e.g. preferences_{which}.json from "
                          "`vlmtune synth`)")
    return read_preferences(source, image_root=data.image_root, on_error=data.on_error,
                            limit=data.max_train_samples if which == "train" else data.max_test_samples,
                            split=data.split if which == "train" else data.test_split,
                            verify_images=data.verify_images, max_image_pixels=data.max_image_pixels, report=report)


def _decode_images(batch: dict[str, list]) -> dict[str, list]:
    if "images" in batch:
        batch["images"] = [[load_image(image, f"sample {sample_id!r}") for image in images]
                           for sample_id, images in zip(batch["id"], batch["images"], strict=True)]
    return batch


def to_preference_dataset(pairs: list[dict[str, Any]]):
    """A `datasets.Dataset` in TRL's conversational preference format (prompt / chosen / rejected + images); images
    (paths, bytes or PIL) are decoded by `load_image` on access."""
    from datasets import Dataset, Features, Image, List, Value

    part = {"type": Value("string"), "text": Value("string")}
    messages = List({"role": Value("string"), "content": List(part)})
    features = Features({"id": Value("string"), "prompt": messages, "chosen": messages, "rejected": messages,
                         "images": List(Image(decode=False)), "kind": Value("string")})
    dataset = Dataset.from_list([{k: pair.get(k) for k in features} for pair in pairs], features=features)
    return dataset.with_transform(_decode_images)
