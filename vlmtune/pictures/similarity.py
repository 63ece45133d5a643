"""A dual encoder's image-caption similarity matrix: the diagonal (each image with its own caption) should stand out."""

from __future__ import annotations

import textwrap
from pathlib import Path

from vlmtune.pictures import figure, save


def similarity_matrix(scores, images: list, captions: list[str], path: str | Path,
                      title: str = "cosine similarity") -> Path:
    """Heatmap of `scores` (images x captions) with the images along the top and the captions down the side."""
    n_images, n_captions = len(images), len(captions)
    fig = figure(1.0 + 0.55 * n_images, 1.2 + 0.45 * n_captions)
    grid = fig.add_gridspec(2, n_images, height_ratios=[1, n_captions], hspace=0.05, wspace=0.05)
    for i, image in enumerate(images):
        thumb = fig.add_subplot(grid[0, i])
        thumb.imshow(image)
        thumb.axis("off")
    axes = fig.add_subplot(grid[1, :])
    shown = axes.imshow(scores.T if hasattr(scores, "T") else scores, cmap="viridis", aspect="auto")
    axes.set_yticks(range(n_captions), [textwrap.shorten(c, 64) for c in captions], fontsize=7)
    axes.set_xticks(range(n_images), [str(i) for i in range(n_images)], fontsize=7)
    axes.set_xlabel("image")
    fig.colorbar(shown, ax=axes, fraction=0.03, pad=0.02, label=title)
    save(fig, path)
    return Path(path)
