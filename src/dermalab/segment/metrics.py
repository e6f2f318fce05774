"""Segmentation metrics per image, as in the ISIC 2018 lesion segmentation task (Task 1;
Codella et al., https://arxiv.org/abs/1902.03368): Dice, Jaccard (IoU), and the thresholded
Jaccard that ranked the challenge (an image's IoU counts as 0 below 0.65)."""

from __future__ import annotations

from typing import Any

import numpy as np

THRESHOLDED_JACCARD_CUTOFF = 0.65


def dice_jaccard(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Dice ``2|P∩T| / (|P|+|T|)`` and Jaccard ``|P∩T| / |P∪T|`` of two binary masks (both 1
    when both are empty)."""
    p, t = np.asarray(pred, bool), np.asarray(truth, bool)
    inter, union = int((p & t).sum()), int((p | t).sum())
    total = int(p.sum()) + int(t.sum())
    if total == 0:
        return 1.0, 1.0
    return 2 * inter / total, inter / union


def thresholded_jaccard(jaccard: float, cutoff: float = THRESHOLDED_JACCARD_CUTOFF) -> float:
    """The ISIC 2018 Task 1 score of one image: its IoU, or 0 below ``cutoff``."""
    return jaccard if jaccard >= cutoff else 0.0


def segmentation_metrics(preds: list[np.ndarray], truths: list[np.ndarray]) -> dict[str, Any]:
    """Mean Dice, Jaccard and thresholded Jaccard over images, and the per-image values."""
    per = [dice_jaccard(p, t) for p, t in zip(preds, truths, strict=True)]
    dice = np.array([d for d, _ in per])
    jac = np.array([j for _, j in per])
    tj = np.array([thresholded_jaccard(j) for j in jac])
    return {"n": len(per), "dice": float(dice.mean()) if len(per) else float("nan"),
            "jaccard": float(jac.mean()) if len(per) else float("nan"),
            "thresholded_jaccard": float(tj.mean()) if len(per) else float("nan"),
            "per_image": {"dice": dice.round(4).tolist(), "jaccard": jac.round(4).tolist()}}
