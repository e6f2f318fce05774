"""A trained lesion segmenter: image in, lesion mask (and measurements) out; ONNX export."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from dermalab.core.atomic import atomic_path, atomic_write_text
from dermalab.core.config import from_dict
from dermalab.core.errors import DermalabError, RunNotFoundError
from dermalab.core.runs import RunPaths, load_checkpoint
from dermalab.data.images import normalize_batch, resize_rgb
from dermalab.segment.model import build_segmenter
from dermalab.segment.postprocess import clean_mask

OPSET = 17


@dataclass
class Segmenter:
    """A segmentation run's best model and how to feed it."""

    model: nn.Module
    mean: list[float]
    std: list[float]
    image_size: int
    resize_mode: str
    threshold: float
    postprocess: bool

    @classmethod
    def load(cls, run_dir: str | Path) -> Segmenter:
        """Load ``RUN_DIR/checkpoints/best.pt`` of a ``dermalab segment train`` run.

        Raises:
            RunNotFoundError: not a segmentation run (one line saying what to run).
        """
        paths = RunPaths(Path(run_dir))
        ckpt = load_checkpoint(paths.require_model("segment"))
        if ckpt.get("kind") != "segmentation":
            raise RunNotFoundError(f"{paths.root}: a classification run, not a segmentation "
                                   "run; train one with `dermalab segment train`")
        model, _, _ = build_segmenter(from_dict(ckpt["config"]).segment, pretrained=False)
        model.load_state_dict(ckpt["model"])
        norm = ckpt["normalization"]
        return cls(model.eval(), list(norm["mean"]), list(norm["std"]), int(ckpt["image_size"]),
                   str(ckpt["resize_mode"]), float(ckpt["threshold"]),
                   bool(ckpt["postprocess"]))

    @torch.no_grad()
    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """``(N, S, S, 3)`` uint8 -> ``(N, S, S)`` lesion probabilities."""
        x = torch.from_numpy(normalize_batch(images, self.mean, self.std))
        out: np.ndarray = torch.sigmoid(self.model(x))[:, 0].numpy()
        return out

    def masks(self, images: np.ndarray) -> list[np.ndarray]:
        """Binary masks (thresholded; largest region with holes filled when configured)."""
        return [clean_mask(p >= self.threshold) if self.postprocess else p >= self.threshold
                for p in self.probabilities(images)]

    def check_maps_back(self, where: str | os.PathLike[str]) -> None:
        """Raise unless this segmenter's masks map back onto the photo exactly (``squash``:
        the photo was stretched to the square input, so stretching the mask back is exact;
        ``pad``/``crop`` lose or add borders).

        Raises:
            DermalabError: naming ``where`` (the segmenter's folder) and what to do.
        """
        if self.resize_mode != "squash":
            raise DermalabError(f"{where}: a segmenter trained with data.resize_mode="
                                f"{self.resize_mode} cannot map its mask back onto the photo; "
                                "train it with resize_mode=squash")

    def photo_masks(self, photos: Sequence[Image.Image]) -> list[np.ndarray]:
        """Each photo's lesion mask at the photo's own size (``(H, W)`` bool): the photos
        are squashed to the square input in one batch, and each mask stretched back
        (nearest neighbour). Needs a ``squash`` segmenter (:meth:`check_maps_back`)."""
        self.check_maps_back("the segmenter")
        if not photos:
            return []
        batch = np.stack([np.asarray(resize_rgb(p, self.image_size, "squash"), np.uint8)
                          for p in photos])
        out = []
        for photo, m in zip(photos, self.masks(batch), strict=True):
            small = Image.fromarray(m.astype(np.uint8) * 255, "L")
            out.append(np.asarray(small.resize(photo.size, Image.Resampling.NEAREST)) >= 128)
        return out


class _Probabilities(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(x))


def export_segmenter(run_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Any]:
    """``model.onnx`` (input ``image`` NCHW normalised, output ``probability`` (N, 1, S, S))
    and ``model.json``, checked against PyTorch on the spot."""
    import onnxruntime as ort

    seg = Segmenter.load(run_dir)
    out = Path(out_dir) if out_dir else RunPaths(Path(run_dir)).export
    out.mkdir(parents=True, exist_ok=True)
    s = seg.image_size
    wrapped = _Probabilities(seg.model).eval()
    path = out / "model.onnx"
    with atomic_path(path) as tmp:
        torch.onnx.export(wrapped, (torch.randn(2, 3, s, s),), str(tmp), dynamo=False,
                          opset_version=OPSET, input_names=["image"],
                          output_names=["probability"],
                          dynamic_axes={"image": {0: "batch"}, "probability": {0: "batch"}})
    rng = np.random.default_rng(0)
    x = normalize_batch(rng.integers(0, 256, (3, s, s, 3), dtype=np.uint8), seg.mean, seg.std)
    with torch.no_grad():
        ref = wrapped(torch.from_numpy(x)).numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"image": x})[0]
    meta = {"format": 1, "kind": "segmentation", "mean": seg.mean, "std": seg.std,
            "image_size": s, "resize_mode": seg.resize_mode, "threshold": seg.threshold,
            "postprocess": seg.postprocess, "opset": OPSET,
            "parity": {"max_abs_diff": float(np.abs(got - ref).max()),
                       "mask_agreement": float(np.mean((got >= seg.threshold)
                                                       == (ref >= seg.threshold)))}}
    atomic_write_text(out / "model.json", json.dumps(meta, indent=2))
    return meta
