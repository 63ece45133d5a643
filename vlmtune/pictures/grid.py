"""Search results as an image grid: the query (an image or a text) and its nearest items with their scores."""

from __future__ import annotations

import textwrap
from pathlib import Path

from vlmtune.pictures import figure, save


def retrieval_grid(query: dict, results: list[dict], path: str | Path) -> Path:
    """`query`: {"image": PIL} or {"text": str}; `results`: [{"image": PIL or None, "caption", "score"}], best first."""
    columns = 1 + len(results)
    fig = figure(2.0 * columns, 2.6)
    head = fig.add_subplot(1, columns, 1)
    if query.get("image") is not None:
        head.imshow(query["image"])
    else:
        head.text(0.5, 0.5, textwrap.fill(query["text"], 18), ha="center", va="center", fontsize=9, wrap=True)
    head.set_title("query", fontsize=9, fontweight="bold")
    head.set_xticks([])
    head.set_yticks([])
    for i, result in enumerate(results, start=2):
        axes = fig.add_subplot(1, columns, i)
        if result.get("image") is not None:
            axes.imshow(result["image"])
        axes.set_title(f"#{i - 1}  {result['score']:.3f}", fontsize=9)
        axes.set_xlabel(textwrap.fill(result.get("caption") or "", 22), fontsize=7)
        axes.set_xticks([])
        axes.set_yticks([])
    save(fig, path)
    return Path(path)
