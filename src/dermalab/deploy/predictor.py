"""One predictor for the CLI and the web service: image in, calibrated class probabilities out.

It loads either a run directory (PyTorch, from ``checkpoints/best.pt``; ONNX Runtime when the
run has ``export/model.onnx``) or an exported model (``model.onnx`` + ``model.json``). Images go
through exactly the decoding and resizing used in training, so a bad file raises the same
:class:`~dermalab.core.errors.ImageError` naming it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from dermalab.core.calibration import calibrated_probs, malignant_score
from dermalab.core.errors import DermalabError
from dermalab.core.runs import ModelInfo, RunPaths, load_run
from dermalab.data.images import load_resized, normalize_batch


class Predictor:
    """Calibrated top-k predictions from ONNX Runtime or PyTorch."""

    def __init__(self, info: ModelInfo, *, onnx_path: Path | None = None,
                 torch_model: Any = None, run_dir: Path | None = None) -> None:
        if onnx_path is None and torch_model is None:
            raise DermalabError("a predictor needs an ONNX file or a PyTorch model")
        self.info = info
        self.run_dir = run_dir
        self._torch = torch_model
        self._session = None
        if onnx_path is not None:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = int(os.environ.get("DERMALAB_ORT_THREADS", "0"))
            self._session = ort.InferenceSession(str(onnx_path), opts,
                                                 providers=["CPUExecutionProvider"])
            self._input = self._session.get_inputs()[0].name
        self.backend = "onnxruntime" if self._session is not None else "torch"

    @classmethod
    def load(cls, path: str | Path, prefer_onnx: bool = True) -> Predictor:
        """A run directory, an export directory, or a ``model.onnx`` with ``model.json`` beside.

        Raises:
            DermalabError: nothing loadable at ``path``.
        """
        p = Path(path)
        if p.is_file() and p.suffix == ".onnx":
            p_json = p.with_suffix(".json")
            if not p_json.is_file():
                raise DermalabError(f"{p}: no {p_json.name} beside it (export writes both)")
            return cls(ModelInfo.from_json(json.loads(p_json.read_text())), onnx_path=p)
        if (p / "model.onnx").is_file() and (p / "model.json").is_file():
            return cls(ModelInfo.from_json(json.loads((p / "model.json").read_text())),
                       onnx_path=p / "model.onnx")
        if RunPaths(p).best.is_file():
            run = load_run(p)
            info = run.info
            onnx = run.paths.export / "model.onnx"
            use_onnx = prefer_onnx and onnx.is_file()
            return cls(info, onnx_path=onnx if use_onnx else None, torch_model=run.model,
                       run_dir=p)
        raise DermalabError(f"{p}: not a run directory (checkpoints/best.pt) or an exported "
                            "model (model.onnx + model.json)")

    @property
    def torch_model(self) -> Any:
        """The PyTorch model (for Grad-CAM), when loaded from a run directory."""
        return self._torch

    def preprocess(self, source: str | os.PathLike[str] | bytes, name: str | None = None
                   ) -> np.ndarray:
        """Decode, orient, convert and resize exactly as in training: ``(S, S, 3)`` uint8."""
        return load_resized(source, self.info.image_size, self.info.resize_mode, name=name)

    def _normalise(self, images: np.ndarray) -> np.ndarray:
        return normalize_batch(images, self.info.mean, self.info.std)

    def _forward(self, x: np.ndarray) -> np.ndarray:
        if self._session is not None:
            out: np.ndarray = self._session.run(None, {self._input: x})[0]
            return out.astype(np.float64)
        return self._forward_all(x)[0]

    def _forward_all(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(logits, penultimate features, final feature map) in one pass."""
        if self._session is not None:
            outs = self._session.run(None, {self._input: x})
            if len(outs) < 3:
                raise DermalabError("this ONNX export predates the 'features'/'feature_map' "
                                    "outputs; run `dermalab export` again")
            return (outs[0].astype(np.float64), outs[1].astype(np.float64),
                    outs[2].astype(np.float32))
        import torch

        from dermalab.core.models import FeaturesAndLogits

        with torch.no_grad():
            logits, feats, fmap = FeaturesAndLogits(self._torch).eval()(torch.from_numpy(x))
        return logits.double().numpy(), feats.double().numpy(), fmap.float().numpy()

    def logits_and_features(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw logits and penultimate features of ``(N, S, S, 3)`` uint8 images."""
        logits, feats, _ = self._forward_all(self._normalise(images))
        return logits, feats

    def forward_all(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Logits, penultimate features and the final feature map of uint8 images."""
        return self._forward_all(self._normalise(images))

    def logits(self, images: np.ndarray, tta: bool = False) -> np.ndarray:
        """Raw logits of ``(N, S, S, 3)`` uint8 images (mean over flip views with ``tta``)."""
        x = self._normalise(images)
        if not tta:
            return self._forward(x)
        views = [x, x[..., ::-1], x[..., ::-1, :], x[..., ::-1, ::-1]]
        return np.mean([self._forward(np.ascontiguousarray(v)) for v in views], axis=0)

    def probabilities(self, images: np.ndarray, tta: bool = False) -> np.ndarray:
        """Temperature-calibrated class probabilities."""
        return calibrated_probs(self.logits(images, tta), self.info.temperature)

    def predict(self, sources: list[str], top_k: int = 3, tta: bool = False
                ) -> list[dict[str, Any]]:
        """Top-k calibrated predictions per image path (errors raise, naming the file)."""
        images = np.stack([self.preprocess(s) for s in sources])
        probs = self.probabilities(images, tta)
        return [self.describe(src, p, top_k) for src, p in zip(sources, probs, strict=True)]

    def predict_each(self, sources: list[str], top_k: int = 3, tta: bool = False
                     ) -> list[dict[str, Any]]:
        """Like :meth:`predict`, but a bad image does not stop the others: its entry is
        ``{"image": path, "error": "what is wrong"}``; the good ones are analysed together."""
        out: list[dict[str, Any]] = []
        good: list[tuple[int, np.ndarray]] = []
        for i, src in enumerate(sources):
            try:
                good.append((i, self.preprocess(src)))
                out.append({})
            except DermalabError as exc:
                out.append({"image": src, "error": str(exc)})
        if good:
            probs = self.probabilities(np.stack([img for _, img in good]), tta)
            for (i, _), p in zip(good, probs, strict=True):
                out[i] = self.describe(sources[i], p, top_k)
        return out

    def describe(self, image: str, probs: np.ndarray, top_k: int = 3) -> dict[str, Any]:
        """``{"image", "top": [{"class", "name", "probability"}], "malignant_score"}``."""
        order = np.argsort(-probs)[: max(1, min(top_k, len(probs)))]
        top = [{"class": self.info.classes[i],
                "name": self.info.display_names.get(self.info.classes[i],
                                                    self.info.classes[i]),
                "probability": float(probs[i])} for i in order]
        out: dict[str, Any] = {"image": image, "top": top}
        mal = self.info.malignant
        if mal and mal.get("classes"):
            score = float(malignant_score(probs[None], self.info.classes, mal["classes"])[0])
            out["malignant_score"] = score
            threshold = mal.get("threshold")
            out["malignant_threshold"] = float(threshold) if threshold is not None else None
            out["malignant_flag"] = bool(threshold is not None and score >= float(threshold))
        return out
