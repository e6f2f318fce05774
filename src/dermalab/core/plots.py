"""Figures from arrays (matplotlib, Agg backend). Each function returns a Figure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator


def grouped_bars(labels: Sequence[str], series: Mapping[str, Sequence[float]], title: str = "",
                 *, log: bool = False, ylabel: str = "", fmt: str = "%g") -> Figure:
    """One group of bars per label, one bar per series, values written on the bars."""
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(labels) * max(1, len(series)) / 2 + 2), 4))
    width = 0.8 / max(1, len(series))
    x = np.arange(len(labels))
    for i, (name, vals) in enumerate(series.items()):
        bars = ax.bar(x + i * width, list(vals), width, label=name)
        ax.bar_label(bars, fontsize=7, fmt=fmt)
    ax.set_xticks(x + width * (len(series) - 1) / 2, list(labels), rotation=30, ha="right")
    if log:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend()
    fig.tight_layout()
    return fig


def bar_counts(per_split: Mapping[str, Mapping[str, int]], title: str = "") -> Figure:
    """Images per class and split as horizontal bars, one row per class, largest class on
    top, log-scaled x axis (HAM10000 is 58:1). The figure grows with the number of classes,
    so 46 class names stay readable."""
    splits = [s for s in per_split if sum(per_split[s].values()) > 0]
    classes = sorted({c for s in splits for c in per_split[s]},
                     key=lambda c: (-sum(per_split[s].get(c, 0) for s in splits), c))
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.3 * len(classes)))
    y = np.arange(len(classes))[::-1].astype(float)
    h = 0.8 / max(1, len(splits))
    for j, sp in enumerate(splits):
        n = [per_split[sp].get(c, 0) for c in classes]
        yj = y + 0.4 - h * (j + 0.5)
        ax.barh(yj, n, height=h, label=sp)
        for yi, v in zip(yj, n, strict=True):
            ax.text(max(v, 1), yi, f" {v}", va="center", fontsize=6)
    ax.set_yticks(y, classes, fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("images (log scale)")
    ax.set_ylim(-0.7, len(classes) - 0.3)
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
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
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
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


def roc_curves(targets: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> Figure:
    """One-vs-rest ROC curve per class (classes absent from ``targets`` are skipped)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for k, name in enumerate(classes):
        pos = targets == k
        if pos.all() or not pos.any():
            continue
        fpr, tpr, _ = roc_curve(pos, probs[:, k])
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(pos, probs[:, k]):.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC curves (one vs rest, test)")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def reliability_diagram(
        panels: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray | None, float]],
        n_bins: int = 15) -> Figure:
    """Side-by-side reliability diagrams: ``(title, probs, targets, weights, ece)`` per panel
    (``weights``: per-image importance weights for a declared class prior, or None).

    Bars show accuracy per confidence bin; the diagonal is perfect calibration; the gap to it
    is what ECE averages (weighted by the bin counts, shown as a histogram below).
    """
    from dermalab.core.calibration import reliability

    fig, axes = plt.subplots(2, len(panels), figsize=(4.6 * len(panels), 5.6),
                             gridspec_kw={"height_ratios": [3, 1]}, squeeze=False)
    for j, (title, probs, targets, weights, ece) in enumerate(panels):
        r = reliability(probs, targets, n_bins, weights)
        centers = (r.edges[:-1] + r.edges[1:]) / 2
        width = 1.0 / n_bins
        acc = np.nan_to_num(r.accuracy)
        conf = np.nan_to_num(r.confidence)
        ax = axes[0, j]
        ax.bar(centers, acc, width=width, edgecolor="k", alpha=0.8, label="accuracy")
        ax.bar(centers, conf - acc, bottom=acc, width=width, color="tab:red", alpha=0.3,
               label="gap")
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"{title}: ECE {ece:.3f}")
        ax.set_ylabel("accuracy")
        ax.legend(fontsize=8, loc="upper left")
        axh = axes[1, j]
        axh.bar(centers, r.count, width=width, color="gray")
        axh.set_yscale("log")
        axh.set_xlim(0, 1)
        axh.set_xlabel("confidence (top class)")
        axh.set_ylabel("images")
    fig.tight_layout()
    return fig


def image_grid(images: Sequence[np.ndarray], titles: Sequence[str], cols: int = 4) -> Figure:
    """A grid of uint8 RGB images with small titles."""
    n = max(1, len(images))
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.1 * cols, 3.3 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(images):
            ax.imshow(images[i])
            ax.set_title(titles[i], fontsize=8)
    fig.tight_layout()
    return fig
