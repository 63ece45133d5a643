"""What a contrastive run reports: held-out retrieval scored as the `retrieval` evaluation task (before and after
training), and its pictures: the similarity matrix of a few held-out pairs and the vision tower's attention."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vlmtune.errors import ConfigError


def evaluate_pairs(run, dual, processor, records: list[dict[str, Any]], before: dict[str, Any] | None = None,
                   write: bool = False) -> dict[str, Any]:
    """Score `records` with the run's retrieval task (eval.task); with `before`, its numbers are kept as `before/*`;
    with `write`, predictions.jsonl, metrics.json and results.json go into the run directory (main process)."""
    from vlmtune.eval.retrieval import retrieval_rows
    from vlmtune.eval.run import format_metrics, write_results
    from vlmtune.eval.scoring import score_rows
    from vlmtune.processes import is_main_process
    from vlmtune.retrieval.encoder import Encoder
    from vlmtune.runs import log

    task = run.cfg.eval.task
    if task.output_type != "retrieval":
        raise ConfigError(f"eval.task.output_type={task.output_type!r}: a contrastive run is scored by a retrieval "
                         "task (eval/task=retrieval)")
    was_training = dual.training
    rows = retrieval_rows(Encoder(dual, processor, dual=True), records, task, run.state, run.cfg.eval.batch_size)
    dual.train(was_training)
    metrics = score_rows(task, rows)
    if before is not None:
        metrics |= {f"before/{k}": v for k, v in before.items() if k != "n"}
    if write and is_main_process():
        write_results(run.dir, rows, metrics, {"task": task.task, "data": str(run.cfg.data.test),
                                               "num_processes": run.state.num_processes})
        log.info("held-out retrieval (%d pairs):\n%s", len(rows), format_metrics(metrics))
        run.log({f"eval/{k}": v for k, v in metrics.items()})
    return metrics


@torch.no_grad()
def write_pictures(dual, processor, pairs: list[dict[str, Any]], out_dir: Path, shown: int = 8) -> None:
    """similarity.png (the first `shown` pairs' images against their captions) and attention.png (the vision
    tower saved in `out_dir`/vision: its last-layer attention over the first four images)."""
    import torch.nn.functional as F

    from vlmtune.contrastive.model import vision_tower
    from vlmtune.data.images import load_image
    from vlmtune.pictures.attention import vision_attention
    from vlmtune.pictures.similarity import similarity_matrix

    pairs = pairs[:shown]
    images = [load_image(pair["image"], f"sample {pair['id']!r}") for pair in pairs]
    captions = [pair["caption"] for pair in pairs]
    dual.eval()
    image_embeds = F.normalize(dual.get_image_features(pixel_values=processor.images(images)).pooler_output, dim=-1)
    text_embeds = F.normalize(dual.get_text_features(**processor.texts(captions)).pooler_output, dim=-1)
    similarity_matrix((image_embeds @ text_embeds.T).numpy(), images, captions, Path(out_dir) / "similarity.png",
                      "image-caption cosine similarity")
    if getattr(vision_tower(dual).config, "patch_size", None):  # a CNN has no attention to draw
        vision_attention(Path(out_dir) / "vision", images[:4], Path(out_dir) / "attention.png")
