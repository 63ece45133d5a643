"""Evaluate a checkpoint directory on the configured task (eval.task; default: the data.test split) and write
predictions, metrics and W&B logs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vlmtune.config import DataConfig, EvalConfig
from vlmtune.data.records import blank_images, read_split
from vlmtune.errors import ConfigError
from vlmtune.eval.generate import generate_distributed
from vlmtune.eval.scoring import check_metric_list, score_rows


def held_out_records(data: DataConfig, blank_dir: Path) -> list[dict[str, Any]]:
    """The test split, blanked like the training images when the run is a blind baseline."""
    if not data.test:
        raise ConfigError("data.test is not set: evaluation needs a test split (a LLaVA-format JSON file)")
    records = read_split(data, "test")
    return blank_images(records, blank_dir) if data.blank_images else records


def eval_records(eval_cfg: EvalConfig, data: DataConfig, run_dir: Path) -> list[dict[str, Any]]:
    """The task's records: data.test (dataset_path null) or the benchmark's docs, at most `limit` of them."""
    task = eval_cfg.task
    check_metric_list(task)  # a misspelt scorer fails before any data or model is loaded
    if task.dataset_path is not None:
        from vlmtune.eval.tasks import task_records

        return task_records(task)  # applies the limit before any image is read
    records = held_out_records(data, run_dir)
    return records[: task.limit] if task.limit is not None else records


def generation_settings(eval_cfg: EvalConfig) -> dict[str, Any]:
    """The decoding every answer gets: greedy, left padding; the task's budget and stop strings win."""
    task = eval_cfg.task.generation_kwargs
    return {"do_sample": False, "padding_side": "left", "batch_size": eval_cfg.batch_size,
            "max_new_tokens": task.max_new_tokens or eval_cfg.max_new_tokens,
            "stop_strings": [*eval_cfg.stop_strings, *task.until]}


def _with_doc(row: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """A benchmark row keeps its structured target (answer lists, option letters) and options for scoring."""
    if "choices" not in record:
        return row
    return {**row, "target": record["target"], "choices": record["choices"], "image_refs": record["image_refs"]}


def evaluate_model(model, processor, records, eval_cfg: EvalConfig, state=None):
    """(rows with per-sample scores, metrics) for `records`; identical on every process."""
    settings = generation_settings(eval_cfg)
    rows = generate_distributed(
        model,
        processor,
        records,
        state=state,
        batch_size=eval_cfg.batch_size,
        max_new_tokens=settings["max_new_tokens"],
        stop_strings=settings["stop_strings"],
    )
    rows = [_with_doc(row, record) for row, record in zip(rows, records, strict=True)]
    return rows, score_rows(eval_cfg.task, rows)


def _replace_text(path: Path, text: str) -> None:
    """Write a file through a temporary sibling: readers never see half of it."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_results(out_dir: Path, rows: list[dict[str, Any]], metrics: dict[str, Any], context: dict[str, Any]) -> None:
    """predictions.jsonl (prompt, prediction, target, score per sample), metrics.json, and results.json: the metrics
    with everything needed to reproduce them (checkpoint, generation settings, processes, library versions)."""
    from vlmtune.model.checkpoint import library_versions

    out_dir.mkdir(parents=True, exist_ok=True)
    # Benchmark images may be bytes or PIL images: the file names where each came from instead.
    saved = [{k: v for k, v in row.items() if k != "image_refs"} | {"images": row["image_refs"]}
             if "image_refs" in row else row for row in rows]
    _replace_text(out_dir / "predictions.jsonl", "".join(json.dumps(row) + "\n" for row in saved))
    _replace_text(out_dir / "metrics.json", json.dumps(metrics, indent=2))
    results = {"metrics": metrics, **context, "versions": library_versions()}
    _replace_text(out_dir / "results.json", json.dumps(results, indent=2, default=str))


def format_metrics(metrics: dict[str, Any]) -> str:
    return "\n".join(f"  {k:<28} {v:.4f}" if isinstance(v, float) else f"  {k:<28} {v}" for k, v in metrics.items())


def evaluate_checkpoint(run, checkpoint: str | Path) -> dict[str, Any]:
    """Load `checkpoint` (adapters merged), score the test split, write and log the results; return the metrics."""
    from vlmtune import tracking
    from vlmtune.model.checkpoint import load_vlm
    from vlmtune.quantize import quantization_summary
    from vlmtune.runs import is_main_process, log

    cfg = run.cfg
    if cfg.eval.task.output_type == "retrieval":  # a dual encoder ranks images and captions: nothing to generate
        return _evaluate_retrieval(run, checkpoint)
    if cfg.eval.task.output_type != "generate_until":
        raise ConfigError(f"eval.task.output_type={cfg.eval.task.output_type!r}: expected generate_until or retrieval")
    # Loaded straight onto this process's device (each rank its own GPU; "cpu" for all ranks on a CPU machine): that
    # is how transformers places a bitsandbytes int8 / nf4 checkpoint (device_map), rather than moving it afterwards.
    model, processor = load_vlm(checkpoint, device=run.state.device, what="checkpoint")
    records = eval_records(cfg.eval, cfg.data, run.dir)
    rows, metrics = evaluate_model(model, processor, records, cfg.eval, run.state)
    augmented_rows = None
    if cfg.eval.retrieval.embeddings:  # the same questions again, with retrieved captions in the prompt
        from vlmtune.retrieval.rag import augmented, retrieved_captions

        found = retrieved_captions(records, cfg.eval.retrieval, cfg.eval.batch_size)
        augmented_rows, plus = evaluate_model(model, processor, augmented(records, found, cfg.eval.retrieval.template),
                                              cfg.eval, run.state)
        metrics |= {f"retrieval_augmented/{k}": v for k, v in plus.items() if k != "n"}
    if cfg.eval.likelihood:
        from vlmtune.eval.likelihood import likelihood

        metrics |= {f"likelihood/{k}": v for k, v in likelihood(model, processor, records, run.state).items()}
    if is_main_process():
        from vlmtune.eval.tasks import task_context

        context = {"checkpoint": str(checkpoint), **task_context(cfg.eval.task, cfg.data),
                   "blank_images": cfg.data.blank_images, "num_processes": run.state.num_processes,
                   "generation": generation_settings(cfg.eval), "quantization": quantization_summary(model.config)}
        write_results(run.dir, rows, metrics, context)
        if augmented_rows is not None:
            _replace_text(run.dir / "predictions_retrieval_augmented.jsonl",
                          "".join(json.dumps(row) + "\n" for row in augmented_rows))
        log.info("evaluation of %s on task %s, %d samples:\n%s", checkpoint, cfg.eval.task.task, len(rows),
                 format_metrics(metrics))
        run.log({f"eval/{k}": v for k, v in metrics.items()})
        if run.tracker is not None:
            run.log({"eval/samples": tracking.samples_table(rows, cfg.logger.log_samples)})
    return metrics


def _evaluate_retrieval(run, checkpoint: str | Path) -> dict[str, Any]:
    """A retrieval task (output_type: retrieval): the dual encoder's recall@k both ways and zero-shot accuracy."""
    from vlmtune.eval.retrieval import retrieval_rows
    from vlmtune.retrieval.encoder import load_encoder
    from vlmtune.runs import is_main_process, log

    cfg = run.cfg
    encoder = load_encoder(checkpoint)
    if not encoder.has_text:
        raise ConfigError(f"eval.task.output_type=retrieval needs a dual encoder, but checkpoint={checkpoint} is a VLM")
    records = eval_records(cfg.eval, cfg.data, run.dir)
    rows = retrieval_rows(encoder, records, cfg.eval.task, run.state, cfg.eval.batch_size)
    metrics = score_rows(cfg.eval.task, rows)
    if is_main_process():
        from vlmtune.eval.tasks import task_context

        context = {"checkpoint": str(checkpoint), **task_context(cfg.eval.task, cfg.data),
                   "num_processes": run.state.num_processes}
        write_results(run.dir, rows, metrics, context)
        log.info("retrieval evaluation of %s on task %s, %d docs:\n%s", checkpoint, cfg.eval.task.task, len(rows),
                 format_metrics(metrics))
        run.log({f"eval/{k}": v for k, v in metrics.items()})
    return metrics
