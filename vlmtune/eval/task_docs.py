"""A benchmark task's documents: rows of a local file, a `datasets` folder or a hub dataset, checked up front.

Every problem names the task, the source and split, and the missing column or bad row, and says what to do: a
benchmark that silently loses rows reports a number for a different test set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlmtune.data.errors import DataError

_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def source_name(path: str, name: str | None, split: str) -> str:
    """How errors and results name a source: `path[:name] [split]` (a single file has neither name nor split)."""
    if Path(path).is_file():
        return path
    return f"{path}:{name} [{split}]" if name else f"{path} [{split}]"


def load_table(task: str, path: str, name: str | None, split: str, kwargs: dict[str, Any] | None = None):
    """The rows of one source as a `datasets.Dataset`: a .json / .jsonl / .parquet file (its only split), a folder
    (written by save_to_disk, or data files `load_dataset` understands), or a hub id (offline: the local cache)."""
    from datasets import load_dataset, load_from_disk

    kwargs = dict(kwargs or {})
    local = Path(path)
    if local.is_file():
        builder = _FILE_BUILDERS.get(local.suffix)
        if builder is None:
            raise DataError(f"task {task}: {path} is a {local.suffix!r} file; use .json, .jsonl or .parquet, a "
                            "datasets folder or a hub id", "bad_format")
        return load_dataset(builder, data_files=str(local), split="train", **kwargs)
    if local.is_dir():
        if (local / "dataset_info.json").exists() or (local / "dataset_dict.json").exists():
            dataset = load_from_disk(str(local))
            if hasattr(dataset, "keys"):
                if split not in dataset:
                    raise DataError(f"task {task}: {path} has no split {split!r} (it has {sorted(dataset)}); set "
                                    "eval.task.test_split", "missing_split")
                dataset = dataset[split]
            return dataset
        return load_dataset(str(local), name, split=split, **kwargs)
    if path.startswith((".", "/")) or local.suffix in _FILE_BUILDERS:
        raise DataError(f"task {task}: data file {path} does not exist; point eval.task.dataset_path at the "
                        "benchmark's local file or folder", "missing_file")
    try:  # a hub id; offline runs need it in the local datasets cache
        return load_dataset(path, name, split=split, **kwargs)
    except Exception as err:  # datasets raises many types for "not found", "no such split" and offline
        raise DataError(f"task {task}: could not load {source_name(path, name, split)} ({type(err).__name__}: "
                        f"{err}); download it while online, or set eval.task.dataset_path to a local .parquet/"
                        ".jsonl file or datasets folder with the same columns", "missing_file") from err


def require_columns(task: str, where: str, columns: list[str], needed: dict[str, str]) -> None:
    """Fail before any generation when a configured column is absent; `needed` maps column -> the config key."""
    for column, key in needed.items():
        if column not in columns:
            raise DataError(f"task {task}: {where} has no column {column!r} (eval.task.{key}); its columns are "
                            f"{sorted(columns)}. Rename the column in the data or set eval.task.{key}",
                            "missing_column")


def join_images(task: str, dataset, table_cfg, column: str) -> list[dict[str, Any]]:
    """Rows with `column` filled from a separate image table by key (lmms-eval's GQA `process_docs`)."""
    table = load_table(task, table_cfg.dataset_path, table_cfg.dataset_name, table_cfg.split)
    where = source_name(table_cfg.dataset_path, table_cfg.dataset_name, table_cfg.split)
    require_columns(task, where, table.column_names, {table_cfg.key: "images_table.key",
                                                      table_cfg.column: "images_table.column"})
    by_key = {row[table_cfg.key]: row[table_cfg.column] for row in table}
    rows = []
    for index, row in enumerate(dataset):
        key = row[table_cfg.doc_key]
        if key not in by_key:
            raise DataError(f"task {task}: row {index} refers to image {key!r} ({table_cfg.doc_key}), which {where} "
                            "does not hold; use the image table that belongs to these questions", "missing_image")
        rows.append({**row, column: by_key[key]})
    return rows
