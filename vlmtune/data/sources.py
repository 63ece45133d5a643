"""Where samples come from: local JSON / JSONL / Parquet files, `datasets` folders, or `datasets` hub ids.

`read_rows` yields `(where, row)` pairs, `where` naming the file and line or row for error messages. A row that
cannot even be parsed (a malformed or non-UTF-8 JSONL line) is yielded as a `DataError` in place of the row, so the
caller's `on_error` policy decides about it like about any other bad sample.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vlmtune.data.errors import DataError


def _json_rows(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason}); re-encode the file as UTF-8",
                        "encoding") from err
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err}); a file of one sample per line should end in .jsonl",
                        "malformed_json") from err
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of samples (or {{\"data\": [...]}})", "bad_format")
    for index, row in enumerate(data):
        yield f"{path}, item {index}", row


def _jsonl_rows(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as err:
                yield where, DataError(f"{where}: not UTF-8 text (byte {err.start}: {err.reason}); re-encode the "
                                       "file as UTF-8", "encoding")
                continue
            if not line:
                continue
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as err:
                yield where, DataError(f"{where}: not valid JSON ({err.msg} at column {err.colno})", "malformed_json")


def _dataset_rows(dataset, name: str) -> Iterator[tuple[str, Any]]:
    for index, row in enumerate(dataset):
        yield f"{name}, row {index}", row


def read_rows(source: str | Path, split: str = "train", streaming: bool = False) -> Iterator[tuple[str, Any]]:
    """`(where, row or DataError)` for every sample of `source`; `streaming` reads `datasets` sources lazily (only as
    many rows as are consumed, without preparing the whole dataset first)."""
    path = Path(source)
    if path.is_file():
        if path.suffix == ".json":
            yield from _json_rows(path)
        elif path.suffix == ".jsonl":
            yield from _jsonl_rows(path)
        elif path.suffix == ".parquet":
            from datasets import load_dataset

            dataset = load_dataset("parquet", data_files=str(path), split="train", streaming=streaming)
            yield from _dataset_rows(dataset, str(path))
        else:
            raise DataError(f"{path}: unknown data file type {path.suffix!r}; use .json, .jsonl or .parquet, or a "
                            "datasets folder / hub id", "bad_format")
        return
    if path.is_dir():
        from datasets import load_dataset, load_from_disk

        if (path / "dataset_info.json").exists() or (path / "state.json").exists():  # written by save_to_disk
            dataset = load_from_disk(str(path))
            dataset = dataset[split] if hasattr(dataset, "keys") else dataset
        else:
            dataset = load_dataset(str(path), split=split, streaming=streaming)
        yield from _dataset_rows(dataset, f"{path} [{split}]")
        return
    if str(source).startswith((".", "/")) or path.suffix in (".json", ".jsonl", ".parquet"):
        raise DataError(f"data file {source} does not exist; run `vlmtune synth` for the demo data or fix the path",
                        "missing_file")
    from datasets import load_dataset

    try:  # a hub id; offline runs need it in the local datasets cache
        dataset = load_dataset(str(source), split=split, streaming=streaming)
    except Exception as err:  # datasets raises many types for "not found" / offline
        raise DataError(f"could not load dataset {source!r} (split {split!r}): {err}", "missing_file") from err
    yield from _dataset_rows(dataset, f"{source} [{split}]")
