"""The report's lesion measurements per class: known shapes painted into photos, their masks
read through data.masks, summarised per class; images without a usable mask are left out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.draw import disk, ellipse

from dermalab.core.config import DataConfig
from dermalab.data.samples import Sample, SourceData
from dermalab.evaluate.lesion_stats import lesion_measurements_by_class
from dermalab.segment.measure import DERMOSCOPIC_COLOURS


def _write(root: Path, name: str, mask: np.ndarray, colour: str) -> Sample:
    photo = np.full((*mask.shape, 3), 225, np.uint8)
    photo[mask] = DERMOSCOPIC_COLOURS[colour]
    Image.fromarray(photo).save(root / "images" / f"{name}.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"{name}_mask.png")
    return Sample(name, "round" if name.startswith("r") else "long", name,
                  path=str(root / "images" / f"{name}.png"))


def test_per_class_medians_of_known_shapes(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    samples = []
    for i, r in enumerate((20, 30, 40)):  # discs: symmetric and compact, diameter 2r
        m = np.zeros((120, 160), bool)
        m[disk((60, 80), r)] = True
        samples.append(_write(tmp_path, f"r{i}", m, "dark_brown"))
    for i in range(2):  # 3:1 ellipses, two colours: less compact
        m = np.zeros((120, 160), bool)
        m[ellipse(60, 80, 15, 45)] = True
        samples.append(_write(tmp_path, f"e{i}", m, "light_brown"))
        photo = np.asarray(Image.open(tmp_path / "images" / f"e{i}.png")).copy()
        photo[50:70, 35:80][m[50:70, 35:80]] = DERMOSCOPIC_COLOURS["blue_grey"]
        Image.fromarray(photo).save(tmp_path / "images" / f"e{i}.png")
    (tmp_path / "images" / "nomask.png").write_bytes(
        (tmp_path / "images" / "r0.png").read_bytes())
    samples.append(Sample("nomask", "round", "nomask", path=str(tmp_path / "images"
                                                                 / "nomask.png")))
    source = SourceData("folder", str(tmp_path), samples, ["long", "round"])
    out = lesion_measurements_by_class(samples, source, DataConfig(masks=str(tmp_path / "masks")),
                                       source.classes)
    assert out is not None and out["measured"] == 5 and out["test_images"] == 6
    rnd, lng = out["per_class"]["round"], out["per_class"]["long"]
    assert rnd["n"] == 3 and lng["n"] == 2 and out["per_class"]["all"]["n"] == 5
    assert rnd["median_diameter_px"] == pytest.approx(60, abs=2)
    assert rnd["median_compactness"] > 0.95 > lng["median_compactness"]
    assert rnd["median_asymmetry"] < 0.05 and rnd["mean_colours"] == 1.0
    assert lng["mean_colours"] == 2.0
    assert rnd["median_area_share"] == pytest.approx(np.pi * 30**2 / (120 * 160), rel=0.03)
    assert lesion_measurements_by_class(samples, source, DataConfig(), source.classes) is None
