"""The lesion measurements of the test images, per true class, for the report.

When a run has lesion masks (``data.masks``), each test image's lesion is measured on the
photo (:func:`dermalab.segment.measure.measure_photo`: asymmetry, border compactness,
dermoscopic colours, diameter; the ABCD rule of dermoscopy, Stolz et al. 1994) and the
measurements are summarised per true class: medians (robust to a few bad masks) and the mean
number of colours. This shows what the outlines look like class by class, e.g. whether
melanomas in this dataset are more asymmetric or many-coloured than naevi. The numbers are
descriptive: they are not what the classifier uses, and they diagnose nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from dermalab.core.config import DataConfig
from dermalab.core.errors import DataError
from dermalab.data.images import array_to_rgb, open_rgb
from dermalab.data.masks import load_mask, mask_path
from dermalab.data.samples import Sample, SourceData
from dermalab.segment.measure import measure_photo

#: At most this many test images are measured (evenly spaced by id): the medians settle long
#: before, and a big test split should not make the report slow.
MAX_MEASURED = 2000
MEDIAN_KEYS = ("area_share", "asymmetry", "compactness", "diameter_px")


def _photo(sample: Sample, source: SourceData) -> Image.Image:
    if sample.path is None:
        assert source.arrays is not None and sample.index is not None
        return array_to_rgb(source.arrays[sample.index])
    return open_rgb(sample.path)


def measure_samples(samples: Sequence[Sample], source: SourceData, cfg: DataConfig
                    ) -> list[tuple[str, dict[str, Any]]]:
    """``(label, measurements)`` of every sample that has a usable, non-empty mask; samples
    without one (or whose mask or photo cannot be read) are left out, not guessed."""
    out = []
    for s in samples:
        if mask_path(s, cfg) is None:
            continue  # no photo decoded for nothing
        try:
            photo = _photo(s, source)  # decoded once: its size checks the mask
            mask = load_mask(s, cfg, photo.size)
            if mask is None or not mask.any():
                continue
            m = measure_photo(photo, mask).to_json()
        except (DataError, OSError):
            continue
        out.append((s.label, m))
    return out


def summarise(measured: Sequence[tuple[str, dict[str, Any]]], classes: Sequence[str]
              ) -> dict[str, dict[str, Any]]:
    """Per class (and ``all``): ``n``, the medians of area share, asymmetry (the mean of the
    two principal-axis asymmetries), compactness and diameter, and the mean colour count."""

    def stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
        vals = {"area_share": [r["area_share"] for r in rows],
                "asymmetry": [(r["asymmetry_major"] + r["asymmetry_minor"]) / 2 for r in rows],
                "compactness": [r["compactness"] for r in rows],
                "diameter_px": [r["diameter_px"] for r in rows]}
        return {"n": len(rows),
                **{f"median_{k}": round(float(np.median(vals[k])), 4) for k in MEDIAN_KEYS},
                "mean_colours": round(float(np.mean([len(r["colours"]) for r in rows])), 2)}

    out = {c: stats([m for lab, m in measured if lab == c]) for c in classes
           if any(lab == c for lab, _ in measured)}
    if measured:
        out["all"] = stats([m for _, m in measured])
    return out


def lesion_measurements_by_class(samples: Sequence[Sample], source: SourceData, cfg: DataConfig,
                             classes: Sequence[str]) -> dict[str, Any] | None:
    """The per-class summary of the test images' lesions, or ``None`` when the run has no
    masks (``data.masks`` unset) or none of its test images has one."""
    if not cfg.masks:
        return None
    chosen = list(samples)
    if len(chosen) > MAX_MEASURED:
        idx = np.linspace(0, len(chosen) - 1, MAX_MEASURED).round().astype(int)
        chosen = [chosen[i] for i in idx]
    measured = measure_samples(chosen, source, cfg)
    if not measured:
        return None
    return {"per_class": summarise(measured, classes), "measured": len(measured),
            "test_images": len(samples),
            "note": "descriptive measurements of the masks' outlines, not a diagnosis"}
