"""Benchmark tasks as configs: read a task's docs (conf/eval/task/<name>.yaml) into evaluation records, and
describe the task for results.json."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from vlmtune.data.errors import DataError
from vlmtune.eval.task_docs import join_images, load_table, require_columns, source_name
from vlmtune.eval.task_prompts import doc_record


def _needed_columns(task) -> dict[str, str]:
    """column -> config key, for every column the task reads from each row."""
    needed = {task.doc_to_target: "doc_to_target"}
    optional = {"doc_to_text": task.doc_to_text, "doc_id": task.doc_id, "hint": task.hint, "breakdown": task.breakdown}
    needed |= {column: key for key, column in optional.items() if column}
    if len(task.doc_to_choice) == 1:  # several letter columns: a 2-option item may lack the later ones
        needed[task.doc_to_choice[0]] = "doc_to_choice"
    if task.images_table is not None:
        needed[task.images_table.doc_key] = "images_table.doc_key"
    elif not task.image_tags:  # tagged images are checked per tag: MMMU docs use between 1 and 7
        needed |= {column: "doc_to_visual" for column in task.doc_to_visual}
    return needed


def task_records(task) -> list[dict[str, Any]]:
    """Evaluation records for the first `task.limit` docs of the task's source, every column checked first and
    every doc id unique (predictions are gathered across processes by id)."""
    dataset = load_table(task.task, task.dataset_path, task.dataset_name, task.test_split, task.dataset_kwargs)
    where = source_name(task.dataset_path, task.dataset_name, task.test_split)
    require_columns(task.task, where, dataset.column_names, _needed_columns(task))
    if task.limit is not None:
        dataset = dataset.select(range(min(task.limit, len(dataset))))
    if len(dataset) == 0:
        raise DataError(f"task {task.task}: {where} has no rows; check eval.task.test_split and the file", "empty")
    rows = join_images(task.task, dataset, task.images_table, task.doc_to_visual[0]) if task.images_table else dataset
    path = Path(task.dataset_path)
    root = Path(task.image_root) if task.image_root else (path.parent if path.is_file() else path)
    records, seen = [], {}
    for index, row in enumerate(rows):
        record = doc_record(task, row, index, f"task {task.task}: {where}, row {index}", root)
        if record["id"] in seen:
            raise DataError(f"task {task.task}: {where}: rows {seen[record['id']]} and {index} share the id "
                            f"{record['id']!r} ({task.doc_id}); ids must be unique (set eval.task.doc_id to a unique "
                            "column, or null to number the rows)", "duplicate_id")
        seen[record["id"]] = index
        records.append(record)
    return records


def task_context(task, data) -> dict[str, Any]:
    """What results.json records about the task: its name, the data it read and its whole configuration."""
    if task.dataset_path is None:
        source = {"path": str(data.test), "split": data.test_split, "limit": task.limit}
    else:
        single_file = Path(task.dataset_path).is_file()  # a file has one split and no config name
        source = {"path": task.dataset_path, "name": None if single_file else task.dataset_name,
                  "split": None if single_file else task.test_split, "limit": task.limit}
    return {"task": task.task, "data": source, "task_config": asdict(task)}
