"""Pictures written into run directories (PNG, matplotlib without a display): training curves, a dual encoder's
similarity matrix, a vision tower's attention over images, a diagram of a composed model from its config, and
search results as an image grid."""


def figure(width: float, height: float):
    """A new matplotlib figure on the non-interactive Agg canvas (no display needed, safe in any process)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt.figure(figsize=(width, height), dpi=100)


def save(fig, path) -> None:
    """Write `fig` as PNG through a temporary sibling (readers never see half a file) and free it."""
    from pathlib import Path

    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
