"""Lesion masks as data: Labelme round trip, mask files beside any format, coverage in inspect,
refusal of a mask whose size differs from its image, and masks that move with the image
through every geometric augmentation."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from dermalab.cli import main
from dermalab.core.config import AugmentConfig, DataConfig, load_config
from dermalab.data.masks import MaskError, labelme_mask, load_mask, mask_coverage, mask_path
from dermalab.data.samples import Sample
from dermalab.data.sources import load_source
from dermalab.data.transforms import train_transform
from tests.conftest import HAM_DIR, write_folder_dataset


def _labelme(path: Path, shapes: list[dict], size: tuple[int, int] = (200, 150)) -> Path:
    path.write_text(json.dumps({"version": "5.5.0", "flags": {}, "shapes": shapes,
                                "imagePath": path.with_suffix(".jpg").name, "imageData": None,
                                "imageWidth": size[0], "imageHeight": size[1]}))
    return path


def test_labelme_shapes_fill_their_known_areas(tmp_path: Path) -> None:
    triangle = {"label": "lesion", "shape_type": "polygon",
                "points": [[20, 20], [120, 20], [20, 120]]}  # legs of 100 px: area 5,000
    rect = {"label": "lesion", "shape_type": "rectangle", "points": [[150, 10], [190, 30]]}
    circle = {"label": "ruler", "shape_type": "circle", "points": [[160, 110], [160, 130]]}
    line = {"label": "lesion", "shape_type": "line", "points": [[0, 0], [10, 10]]}
    path = _labelme(tmp_path / "photo.json", [triangle, rect, circle, line])
    only_lesion = labelme_mask(path, ["lesion"])
    assert only_lesion.shape == (150, 200)
    # Pillow fills edges inclusively: the triangle holds 5,000 px plus about half its border.
    assert only_lesion[:, :140].sum() == pytest.approx(5000 + 150, abs=60)
    assert only_lesion[:, 140:].sum() == 41 * 21  # the rectangle, corners included
    everything = labelme_mask(path)
    assert (everything & ~only_lesion).sum() == pytest.approx(np.pi * 20**2, rel=0.05)
    assert not labelme_mask(path, ["no such label"]).any()


@pytest.mark.parametrize("content", ["{not json", json.dumps({"shapes": []}),
                                     json.dumps({"imageWidth": 10, "imageHeight": 10,
                                                 "shapes": [{"shape_type": "polygon",
                                                             "points": [[1, 1]]}]})])
def test_a_broken_labelme_file_names_itself(tmp_path: Path, content: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(MaskError, match=r"bad\.json"):
        labelme_mask(path)


def _mask_png(path: Path, size: tuple[int, int], box: tuple[int, int, int, int],
              grey_edge: bool = False) -> None:
    arr = np.zeros((size[1], size[0]), np.uint8)
    x0, y0, x1, y1 = box
    arr[y0:y1, x0:x1] = 255
    if grey_edge:  # smoothing from downscaling: edges between 0 and 255
        arr[y0 - 1, x0:x1] = 200
        arr[y1, x0:x1] = 60
    Image.fromarray(arr).save(path)


def test_folder_masks_by_every_naming_and_the_size_check(tmp_path: Path) -> None:
    root = write_folder_dataset(tmp_path / "ds", per_class=3)  # 40x30 images
    masks = tmp_path / "masks"
    masks.mkdir()
    _mask_png(masks / "img_000_mask.png", (40, 30), (5, 5, 20, 15), grey_edge=True)
    _mask_png(masks / "img_001.png", (40, 30), (0, 0, 0, 0))  # empty
    _mask_png(masks / "img_002.png", (80, 60), (5, 5, 20, 15))  # the wrong size
    cfg = DataConfig(source=str(root), masks=str(masks))
    by_name = {s.sample_id: s for s in load_source(cfg).samples}
    first = by_name["akiec/img_000.jpg"]
    m = load_mask(first, cfg, (40, 30))
    assert m is not None and m.sum() == 15 * 10 + 15  # the 200-grey edge row counts, 60 not
    with pytest.raises(MaskError, match=r"img_002\.png is 80x60 but its image .*img_002\.jpg "
                                        r"is 40x30"):
        load_mask(by_name["akiec/img_002.jpg"], cfg, (40, 30))
    samples = list(by_name.values())
    cov = mask_coverage(samples, [(40, 30)] * len(samples), cfg)
    # Each file name is shared by one image of each of the 3 classes.
    assert (cov["with_mask"], cov["without_mask"], cov["empty"], len(cov["bad"])) == (6, 0, 3, 3)
    assert cov["foreground_share"]["median"] == pytest.approx(165 / 1200, abs=1e-3)
    # A mask folder that mirrors the class folders tells equal file names apart.
    (masks / "bcc").mkdir()
    _mask_png(masks / "bcc" / "img_000_mask.png", (40, 30), (0, 0, 40, 30))
    assert mask_path(by_name["bcc/img_000.jpg"], cfg) == masks / "bcc" / "img_000_mask.png"
    assert mask_path(by_name["nv/img_000.jpg"], cfg) == masks / "img_000_mask.png"


def test_ham_style_masks_are_found_by_image_id(tmp_path: Path) -> None:
    masks = tmp_path / "masks"
    masks.mkdir()
    _mask_png(masks / "ISIC_0000001_segmentation.png", (40, 30), (1, 1, 9, 9))
    cfg = DataConfig(masks=str(masks))
    assert mask_path(Sample("ISIC_0000001", "mel", "L1", "/x/ISIC_0000001.jpg"), cfg) == \
        masks / "ISIC_0000001_segmentation.png"
    assert mask_path(Sample("ISIC_0000002", "mel", "L1", "/x/ISIC_0000002.jpg"), cfg) is None
    labelme_cfg = DataConfig(masks="labelme")
    img = tmp_path / "photo.jpg"
    Image.new("RGB", (200, 150)).save(img)
    _labelme(tmp_path / "photo.json", [])
    assert mask_path(Sample("photo.jpg", "x", "g", str(img)), labelme_cfg) == \
        tmp_path / "photo.json"


def test_inspect_reports_mask_coverage_and_refuses_a_mismatch(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_folder_dataset(tmp_path / "ds", per_class=3)
    masks = tmp_path / "masks"
    masks.mkdir()
    _mask_png(masks / "img_000_mask.png", (40, 30), (5, 5, 20, 15))
    code = main(["data", "inspect", str(root), "--set", f"data.masks={masks}", "--json"])
    rep = json.loads(capsys.readouterr().out)
    assert code == 0
    assert (rep["masks"]["with_mask"], rep["masks"]["without_mask"]) == (3, 6)
    _mask_png(masks / "img_001_mask.png", (41, 30), (5, 5, 20, 15))
    assert main(["data", "inspect", str(root), "--set", f"data.masks={masks}"]) == 1
    captured = capsys.readouterr()
    assert "3 unusable mask(s)" in captured.err and "img_001_mask.png is 41x30" in captured.err
    assert "masks    3 with a mask, 3 without, 0 empty, 3 unusable" in captured.out
    assert main(["data", "inspect", str(root), "--set", f"data.masks={masks}",
                 "data.skip_bad=true"]) == 0  # listed, not fatal


def test_a_relative_masks_folder_in_a_config_is_read_from_its_folder(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data:\n  masks: masks\n  mask_labels: [lesion]\n")
    cfg = load_config(recipe)
    assert cfg.data.masks == str(tmp_path / "masks") and cfg.data.mask_labels == ["lesion"]
    recipe.write_text("data:\n  masks: labelme\n")
    assert load_config(recipe).data.masks == "labelme"


@pytest.mark.parametrize("seed", range(5))
def test_the_mask_moves_with_the_image_through_every_geometric_augmentation(seed: int) -> None:
    """Crop, flips and rotation applied to an (image, mask) pair: the bright region of the
    image and the mask still coincide, pixel for pixel away from the one-pixel edge that image
    interpolation blurs."""
    size = 96
    img = np.zeros((3, 120, 120), np.uint8)
    mask = np.zeros((120, 120), np.uint8)
    mask[30:70, 40:100] = 1
    mask[70:95, 40:60] = 1  # an L shape: any flip or turn shows
    img[:, mask.astype(bool)] = 255
    aug = AugmentConfig(scale_min=0.5, hflip=True, vflip=True, rotation=40, color_jitter=0,
                        hue=0)
    tf = train_transform(size, [0.0] * 3, [1.0] * 3, aug)
    torch.manual_seed(seed)
    out_img, out_mask = tf(torch.from_numpy(img), tv_tensors.Mask(torch.from_numpy(mask)))
    assert out_img.shape == (3, size, size) and out_mask.shape == (size, size)
    bright = out_img[0].numpy() > 0.5
    m = out_mask.numpy().astype(bool)
    # Pixels whose 3x3 neighbourhood is all inside or all outside the mask: no ambiguity.
    pad = np.pad(m, 1, mode="edge")
    window = np.stack([pad[dy:dy + size, dx:dx + size] for dy in range(3) for dx in range(3)])
    interior = window.all(0) | ~window.any(0)
    assert interior.mean() > 0.8
    assert np.array_equal(bright[interior], m[interior])
    assert m.any()  # the lesion is still in view


@pytest.mark.realdata
def test_real_ham10000_masks_cover_every_image() -> None:
    masks = HAM_DIR / "masks"
    if not masks.is_dir():
        pytest.skip(f"HAM10000 masks not found at {masks}")
    with open(HAM_DIR / "HAM10000_metadata.csv") as f:
        ids = [r["image_id"] for r in csv.DictReader(f)][:300]
    samples = [Sample(i, "x", i, str(HAM_DIR / "images" / f"{i}.jpg")) for i in ids]
    cov = mask_coverage(samples, [(200, 150)] * len(samples), DataConfig(masks=str(masks)))
    assert (cov["with_mask"], cov["without_mask"], cov["bad"]) == (300, 0, [])
    assert 0.0 < cov["foreground_share"]["min"] < cov["foreground_share"]["max"] < 1.0
