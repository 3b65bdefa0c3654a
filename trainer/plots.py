"""Annotated heatmaps as PNG: confusion matrices of the trainer, accuracy matrices of the continual runner."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from data_shards.atomic import atomic_path


def heatmap_png(matrix, path: Path, *, rows: list[str], cols: list[str], title: str, xlabel: str, ylabel: str,
                fmt: str = "{:d}", normalise_rows: bool = False) -> Path:
    """Write `matrix` (NaN cells left blank) as an annotated heatmap; colours are row-normalised if asked."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on cluster nodes
    import matplotlib.pyplot as plt

    values = np.asarray(matrix, dtype=float)
    shade = values
    if normalise_rows:
        totals = np.nansum(values, axis=1, keepdims=True)
        shade = np.divide(values, totals, out=np.zeros_like(values), where=totals > 0)
    size = max(4.0, 0.55 * len(cols) + 2.5)
    fig, ax = plt.subplots(figsize=(size, max(3.5, 0.5 * len(rows) + 2.0)))
    ax.imshow(np.ma.masked_invalid(shade), cmap="Blues", vmin=0.0, vmax=np.nanmax(shade) if np.isfinite(shade).any() else 1.0)
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    finite = shade[np.isfinite(shade)]
    threshold = 0.6 * finite.max() if finite.size else 0.0
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            text = fmt.format(int(v)) if fmt == "{:d}" else fmt.format(v)
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="white" if shade[i, j] > threshold else "black")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path


def confusion_png(confusion, classes: list[str], path: Path, title: str) -> Path:
    return heatmap_png(confusion, path, rows=classes, cols=classes, title=title, xlabel="predicted",
                       ylabel="true", normalise_rows=True)
