"""Figures from arrays (matplotlib, Agg backend). Each function returns a Figure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure


def bar_counts(per_split: Mapping[str, Mapping[str, int]], title: str = "") -> Figure:
    """Grouped bars of images per class for each split, log-scaled y axis."""
    splits = [s for s in per_split if sum(per_split[s].values()) > 0]
    classes = sorted({c for s in splits for c in per_split[s]})
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(classes) + 2), 4))
    width = 0.8 / max(1, len(splits))
    x = np.arange(len(classes))
    for i, sp in enumerate(splits):
        vals = [per_split[sp].get(c, 0) for c in classes]
        bars = ax.bar(x + i * width, vals, width, label=sp)
        ax.bar_label(bars, fontsize=7)
    ax.set_xticks(x + width * (len(splits) - 1) / 2, classes, rotation=30, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("images (log)")
    ax.set_title(title, fontsize=10)
    ax.legend()
    fig.tight_layout()
    return fig


def curves(
    history: Mapping[str, Sequence[float]], keys: Sequence[str], title: str, ylabel: str
) -> Figure:
    """Lines of per-epoch values (e.g. ``train_loss`` and ``val_loss``) against epoch."""
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = history.get("epoch", [])
    for key in keys:
        if key in history and len(history[key]):
            ax.plot(epochs, history[key], marker="o", ms=3, label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def confusion_matrix_figure(
    cm: np.ndarray, classes: Sequence[str], normalize: bool = False, title: str = ""
) -> Figure:
    """Heat-map of a confusion matrix (rows: true, columns: predicted)."""
    data = cm.astype(np.float64)
    if normalize:
        rows = data.sum(axis=1, keepdims=True)
        data = np.divide(data, rows, out=np.zeros_like(data), where=rows > 0)
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * n, 0.8 + 0.65 * n))
    im = ax.imshow(data, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or ("confusion matrix (row-normalised)" if normalize else
                           "confusion matrix (counts)"))
    thresh = data.max() / 2 if data.size else 0
    for i in range(n):
        for j in range(n):
            txt = f"{data[i, j]:.2f}" if normalize else f"{int(cm[i, j])}"
            ax.text(j, i, txt, ha="center", va="center", fontsize=7,
                    color="white" if data[i, j] > thresh else "black")
    fig.tight_layout()
    return fig


def save(fig: Figure, path: str) -> None:
    """Save and close a figure."""
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
