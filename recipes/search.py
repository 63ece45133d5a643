"""Search a `vlmtune embed` output: the nearest images (or captions) to a text or an image, as a table and a grid.

Run as `vlmtune search embeddings=<embed run dir> text="a red circle and a blue square."` or `image=<file>`
(`target=text` returns captions). Writes <run_dir>/search.json and <run_dir>/search.png.
"""

import hydra
from omegaconf import DictConfig

from vlmtune.errors import run_command
from vlmtune.hydra_setup import setup

setup()


@hydra.main(config_path="../conf", config_name="search", version_base="1.3")
def main(cfg: DictConfig) -> None:
    import json

    from vlmtune.data.images import load_image
    from vlmtune.errors import ConfigError
    from vlmtune.pictures.grid import retrieval_grid
    from vlmtune.retrieval.encoder import load_encoder
    from vlmtune.retrieval.index import EmbeddingIndex
    from vlmtune.runs import start_run

    run = start_run(cfg, "search")
    cfg = run.cfg
    if (cfg.text is None) == (cfg.image is None):
        raise ConfigError("give exactly one query: text=\"...\" or image=<file>")
    index = EmbeddingIndex.load(cfg.embeddings)
    index.column(cfg.target)  # a VLM's embeddings have no captions to search: say so before loading the model
    encoder = load_encoder(index.meta["checkpoint"], what=f"the encoder recorded in {cfg.embeddings}")
    query = encoder.texts([cfg.text]) if cfg.text is not None else encoder.images([cfg.image])
    results = index.search(cfg.target, query.numpy(), cfg.k, cfg.index)[0]

    print(f"query: {cfg.text if cfg.text is not None else cfg.image}  ({cfg.k} nearest {cfg.target}s, "
          f"index {cfg.index})")
    for rank, hit in enumerate(results, start=1):
        print(f"{rank:>3}  {hit['score']:.4f}  {hit['id']:<20} {hit['caption']}")
    (run.dir / "search.json").write_text(json.dumps({"query": {"text": cfg.text, "image": cfg.image},
                                                     "target": cfg.target, "results": results}, indent=1))
    shown = {"text": cfg.text} if cfg.text is not None else {"image": load_image(cfg.image, "image")}
    retrieval_grid(shown, [{**hit, "image": load_image(hit["image"], hit["id"]) if hit["image"] else None}
                           for hit in results], run.dir / "search.png")
    run.finish()


if __name__ == "__main__":
    run_command(main)
