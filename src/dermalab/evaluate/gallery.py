"""One Grad-CAM gallery renderer, for the report's worst mistakes and for ``dermalab explain``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dermalab.core import plots
from dermalab.core.runs import LoadedRun, Predictions
from dermalab.data.prepare import PreparedData
from dermalab.evaluate.explain import cam_maps, overlay


def worst_mistakes(test: Predictions, probs: np.ndarray, n: int) -> list[int]:
    """Indices of the ``n`` misclassified test images the model was most confident about."""
    pred = probs.argmax(1)
    wrong = np.flatnonzero(pred != test.targets)
    order = wrong[np.argsort(-probs[wrong, pred[wrong]], kind="stable")]
    return [int(i) for i in order[:n]]


def mistakes(run: LoadedRun, data: PreparedData, test: Predictions, n: int
             ) -> tuple[np.ndarray, list[str], list[str | None]]:
    """The ``n`` most confident test mistakes as gallery input: cached images, names (sample
    ids) and true classes."""
    probs = run.info.decision.probabilities(test.logits)
    idx = worst_mistakes(test, probs, n)
    if not idx:
        return np.zeros((0, 0, 0, 3), np.uint8), [], []
    images = np.stack([data.store.get(test.ids[i]) for i in idx])
    return (images, [test.ids[i] for i in idx],
            [run.info.classes[test.targets[i]] for i in idx])


def render_gallery(
    run: LoadedRun,
    images: np.ndarray,
    names: Sequence[str],
    truths: Sequence[str | None],
    out_png: Path,
    *,
    method: str = "gradcam",
    target_class: str | None = None,
    size: int = 224,
    per_image_dir: Path | None = None,
) -> list[dict[str, Any]]:
    """Grad-CAM overlays of ``images`` (model-input uint8) as one grid PNG.

    Each map explains ``target_class`` or else the predicted class; each title names the
    image, its true class where known, the served prediction and its probability. With
    ``per_image_dir``, every image is also written there as ``<name>_<method>.png`` (photo |
    overlay). Returns one entry per image.
    """
    info = run.info
    chosen = [info.classes.index(target_class)] * len(images) if target_class else None
    maps, logits = cam_maps(run.model, info.backbone, images, info.mean, info.std, chosen, method)
    assert logits is not None
    probs = info.decision.probabilities(logits)
    shown, titles, entries = [], [], []
    for j, name in enumerate(names):
        k = chosen[j] if chosen else int(probs[j].argmax())
        pred, p = info.classes[int(probs[j].argmax())], float(probs[j].max())
        ov = overlay(images[j], maps[j], size=max(size, images.shape[1]))
        label = name.replace("/", "_")
        entry: dict[str, Any] = {"image": name, "true": truths[j], "pred": pred,
                                 "probability": p, "explained_class": info.classes[k]}
        if per_image_dir is not None:
            orig = np.asarray(Image.fromarray(np.ascontiguousarray(images[j][..., :3]))
                              .resize(ov.shape[:2][::-1]))
            entry["file"] = f"{label}_{method}.png"
            Image.fromarray(np.concatenate([orig, ov], axis=1)).save(per_image_dir
                                                                     / entry["file"])
        shown.append(ov)
        titles.append(f"{label[-24:]}\ntrue {truths[j]} / pred {pred} ({p:.2f})" if truths[j]
                      else f"{label[-24:]}\npred {pred} ({p:.2f}); map: {info.classes[k]}")
        entries.append(entry)
    plots.save(plots.image_grid(shown, titles), str(out_png))
    return entries
