"""Batch prediction: questions about many images -> a JSONL file of answers, resumable and split across processes.

Input is a folder of images asked one question, or a data file (any `data.format`, plus `vqa`: image + question)
read and checked like training data, with a trailing answer kept as the row's `target`. Answers come from the
same batched, left-padded greedy generation as `evaluate` (vlmtune.eval.generate), so a question gets the answer
`evaluate` gives it. Every batch is appended to the output as soon as it is answered; a rerun with the same output
skips the ids already there, so a killed job loses at most the batches in flight.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlmtune.data.errors import DataError, DataReport
from vlmtune.data.images import check_image_header

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def folder_records(folder: Path, question: str, *, on_error: str, max_image_pixels: int, report: DataReport,
                   image_position: str = "before") -> list[dict[str, Any]]:
    """One record per image file under `folder` (sorted, sub-folders included), id = its path inside the folder."""
    from vlmtune.infer.conversation import question_parts

    turn = question_parts(question, 1, image_position)
    records = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
        report.samples += 1
        try:
            check_image_header(str(path), str(path), max_image_pixels)
        except DataError as error:
            if on_error == "raise":
                raise
            report.add_error(error)
            continue
        report.kept += 1
        report.images += 1
        records.append({"id": str(path.relative_to(folder)), "images": [str(path)], "kind": None,
                        "messages": [{"role": "user", "content": turn}]})
    return records


def input_records(cfg) -> tuple[list[dict[str, Any]], DataReport]:
    """The questions `cfg.input` holds (a PredictRecipeConfig), checked before any model is loaded."""
    from vlmtune.data.formats import to_sample
    from vlmtune.data.records import read_samples

    source, report = Path(cfg.input), DataReport()
    if cfg.question is not None:
        if not source.is_dir():
            raise DataError(f"question= asks one question about every image of a folder, but input={source} is not "
                            "a folder; for a data file put the questions in it (drop question=)", "bad_format")
        records = folder_records(source, cfg.question, on_error=cfg.on_error, max_image_pixels=cfg.max_image_pixels,
                                 report=report, image_position=cfg.answer.image_position)
        if not records:
            raise DataError(f"input={source}: no images ({', '.join(IMAGE_SUFFIXES)}) to answer\n{report.summary()}",
                            "empty")
    elif source.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in source.iterdir()):
        raise DataError(f"input={source} is a folder of images: give the question to ask about each with "
                        "question=\"...\"", "bad_format")
    else:
        records = read_samples(source, image_root=cfg.image_root, fmt=cfg.format, on_error=cfg.on_error,
                               max_image_pixels=cfg.max_image_pixels, report=report,
                               convert=lambda row, where, root: to_sample(row, cfg.format, where, root,
                                                                          open_question=True))
    seen: dict[str, int] = {}
    for index, record in enumerate(records):
        if record["id"] in seen:
            raise DataError(f"input={source}: id {record['id']!r} appears twice (samples {seen[record['id']]} and "
                            f"{index}); answers are resumed by id, so ids must be unique", "duplicate_id")
        seen[record["id"]] = index
    return records, report


def read_answers(output: Path) -> list[dict[str, Any]]:
    """The answers an earlier run wrote to `output`. A last line cut short by a kill is dropped (its batch is
    answered again); a malformed line elsewhere is an error naming it."""
    if not output.exists():
        return []
    lines = output.read_text().splitlines()
    rows = []
    for number, line in enumerate(lines, start=1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number == len(lines):
                break
            raise DataError(f"{output}:{number}: not valid JSON ({err.msg}); this file is not an answers file "
                            "written by `vlmtune predict`: give another output=", "malformed_json") from None
    return rows


def _answer_row(row: dict[str, Any]) -> dict[str, Any]:
    images = [image if isinstance(image, str) else f"<{type(image).__name__}>" for image in row["images"]]
    kept = {"id": row["id"], "images": images, "prompt": row["prompt"], "prediction": row["prediction"]}
    return kept | {k: row[k] for k in ("target", "kind") if row.get(k) is not None}


def _write_lines(output: Path, rows: Sequence[dict[str, Any]]) -> None:
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(output)


def predict(model, processor, records: Sequence[dict[str, Any]], output: Path, state=None, *, batch_size: int = 16,
            max_new_tokens: int = 128, stop_strings: Sequence[str] = (), progress: bool = True) -> dict[str, int]:
    """Answer the records whose ids `output` lacks, appending each batch; returns {answered, skipped, total}.

    With several processes the questions left are split evenly (the last shard padded with repeats, dropped by id),
    every batch is gathered to the main process, and only it writes. At the end the file is rewritten in input order.
    """
    from vlmtune.eval.generate import generate_answers

    main = state is None or state.is_main_process
    done = {row["id"]: row for row in read_answers(output)}
    todo = [r for r in records if r["id"] not in done]
    if main and done:
        _write_lines(output, list(done.values()))  # drop a last line a kill cut short before appending
    num_processes = 1 if state is None else state.num_processes
    if todo:
        from contextlib import nullcontext

        from tqdm.auto import tqdm

        shards = (state.split_between_processes(todo, apply_padding=True) if num_processes > 1 else nullcontext(todo))
        bar = tqdm(total=len(todo), desc="predict", unit="answer", disable=not (main and progress))
        with shards as shard, (output.open("a") if main else nullcontext()) as out:
            for start in range(0, len(shard), batch_size):
                rows = generate_answers(model, processor, shard[start : start + batch_size], batch_size=batch_size,
                                        max_new_tokens=max_new_tokens, stop_strings=stop_strings)
                if num_processes > 1:
                    from accelerate.utils import gather_object

                    rows = gather_object(rows)
                if main:
                    fresh = [_answer_row(r) for r in rows if r["id"] not in done]
                    done |= {r["id"]: r for r in fresh}
                    out.write("".join(json.dumps(r) + "\n" for r in fresh))
                    out.flush()
                    bar.update(len(fresh))
        bar.close()
    if main:
        order = {r["id"]: i for i, r in enumerate(records)}
        _write_lines(output, sorted(done.values(), key=lambda r: order.get(r["id"], len(order))))
    if num_processes > 1:
        state.wait_for_everyone()
    return {"answered": len(todo), "skipped": len(records) - len(todo), "total": len(records)}
