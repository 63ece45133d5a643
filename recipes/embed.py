"""Embed a data split: image and caption embeddings with ids, from a dual encoder (or a VLM's vision tower).

Run as `vlmtune embed checkpoint=<dual encoder or VLM> [data=...] [split=train|test]`.
Writes <run_dir>/embeddings.parquet (id, image path, caption, image_embedding, text_embedding) and embed.json, which
`vlmtune search` and retrieval-augmented evaluation (`eval.retrieval.embeddings=<run_dir>`) read.
"""

import hydra
from omegaconf import DictConfig

from vlmtune.errors import run_command
from vlmtune.hydra_setup import setup

setup()


@hydra.main(config_path="../conf", config_name="embed", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from pathlib import Path

    from vlmtune.data.records import read_split
    from vlmtune.retrieval.embed import embedding_rows
    from vlmtune.retrieval.encoder import load_encoder
    from vlmtune.retrieval.index import write_embeddings
    from vlmtune.runs import log, start_run

    run = start_run(cfg, "embed")
    cfg = run.cfg
    encoder = load_encoder(cfg.checkpoint)
    records = read_split(cfg.data, cfg.split)
    rows = embedding_rows(encoder, records, cfg.batch_size)
    meta = {"checkpoint": str(Path(cfg.checkpoint).resolve()), "dual_encoder": encoder.has_text,
            "data": str(getattr(cfg.data, cfg.split)), "split": cfg.split, "rows": len(rows["id"]),
            "dim": len(rows["image_embedding"][0]) if rows["id"] else 0,
            "without_image": len(records) - len(rows["id"])}
    path = write_embeddings(run.dir, rows, meta)
    log.info("embed: %d rows (%d-wide, %s) written to %s%s", meta["rows"], meta["dim"],
             "images and captions" if encoder.has_text else "images only", path,
             f"; {meta['without_image']} samples without an image left out" if meta["without_image"] else "")
    run.finish()


if __name__ == "__main__":
    run_command(main)
