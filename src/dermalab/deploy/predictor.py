"""One predictor for the CLI and the web service: image in, the served answer out (the run's
:class:`~dermalab.core.decision.Decision`: the same rule the evaluation measures).

It loads either a run directory (PyTorch, from ``checkpoints/best.pt``; ONNX Runtime when the
run has ``export/model.onnx``) or an exported model (``model.onnx`` + ``model.json``). Images go
through exactly the decoding and resizing used in training, so a bad file raises the same
:class:`~dermalab.core.errors.ImageError` naming it.
"""

from __future__ import annotations

import json
import os
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dermalab.core.errors import DermalabError
from dermalab.core.metadata import MetadataModel
from dermalab.core.runs import SEGMENTER_DIR, ModelInfo, RunPaths, load_run
from dermalab.data.images import crop_fraction, load_resized, normalize_batch, open_rgb, resize_rgb
from dermalab.data.lesion import NEEDS_MASK, apply_input, lesion_box
from dermalab.data.masks import resize_mask


class Predictor:
    """Calibrated top-k predictions from ONNX Runtime or PyTorch."""

    def __init__(self, info: ModelInfo, *, onnx_path: Path | None = None,
                 torch_model: Any = None, run_dir: Path | None = None,
                 threads: int | None = None) -> None:
        if onnx_path is None and torch_model is None:
            raise DermalabError("a predictor needs an ONNX file or a PyTorch model")
        self.info = info
        self.run_dir = run_dir
        self.home: Path | None = run_dir if run_dir is not None else (
            onnx_path.parent if onnx_path is not None else None)
        self._segmenter: Any = None
        self._torch = torch_model
        self._session = None
        if onnx_path is not None:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            # 0: every core for one inference (the CLI); a server answering several requests
            # at once passes 1, so requests run side by side instead of fighting for cores.
            opts.intra_op_num_threads = threads or 0
            self._session = ort.InferenceSession(str(onnx_path), opts,
                                                 providers=["CPUExecutionProvider"])
            self._input = self._session.get_inputs()[0].name
        self.backend = "onnxruntime" if self._session is not None else "torch"

    @classmethod
    def load(cls, path: str | Path, prefer_onnx: bool = True, threads: int | None = None
             ) -> Predictor:
        """A run directory, an export directory, or a ``model.onnx`` with ``model.json`` beside.

        Raises:
            DermalabError: nothing loadable at ``path``.
        """
        p = Path(path)
        if p.is_file() and p.suffix == ".onnx":
            p_json = p.with_suffix(".json")
            if not p_json.is_file():
                raise DermalabError(f"{p}: no {p_json.name} beside it (export writes both)")
            return cls(ModelInfo.from_json(json.loads(p_json.read_text())), onnx_path=p,
                       threads=threads)
        if (p / "model.onnx").is_file() and (p / "model.json").is_file():
            return cls(ModelInfo.from_json(json.loads((p / "model.json").read_text())),
                       onnx_path=p / "model.onnx", threads=threads)
        if RunPaths(p).best.is_file():
            run = load_run(p)
            info = run.info
            onnx = run.paths.export / "model.onnx"
            use_onnx = prefer_onnx and onnx.is_file()
            return cls(info, onnx_path=onnx if use_onnx else None, torch_model=run.model,
                       run_dir=p, threads=threads)
        raise DermalabError(f"{p}: not a run directory (checkpoints/best.pt) or an exported "
                            "model (model.onnx + model.json)")

    @property
    def torch_model(self) -> Any:
        """The PyTorch model (for Grad-CAM), when loaded from a run directory."""
        return self._torch

    def preprocess(self, source: str | os.PathLike[str] | bytes, name: str | None = None,
                   mask: np.ndarray | None = None) -> np.ndarray:
        """Decode, orient, convert, resize (and for a lesion-aware model, apply its input
        mode: see :meth:`prepare`) exactly as in training: ``(S, S, 3)`` (or ``(S, S, 4)``)
        uint8."""
        if self.info.input_mode not in NEEDS_MASK:
            return load_resized(source, self.info.image_size, self.info.resize_mode, name=name)
        return self.prepare(open_rgb(source, name=name), mask)

    def _with_lesion(self, src: str, masks_dir: str | None
                     ) -> tuple[np.ndarray, dict[str, Any]]:
        """A lesion-aware model's input for one file, and the lesion's measurements (from the
        given mask, else the segmenter's), which are descriptive, not diagnostic."""
        from dermalab.segment.measure import measure_photo

        img = open_rgb(src)
        given = find_mask(masks_dir, src) if masks_dir else None
        mask = given if given is not None else self.segment(img)
        x = self.prepare(img, mask)
        return x, {"mask": "given" if given is not None else "segmenter",
                   "measurements": measure_photo(img, mask).to_json(),
                   "note": "descriptive measurements of the outlined lesion, not a diagnosis"}

    @cached_property
    def has_segmenter(self) -> bool:
        """Whether the model came with a lesion segmenter (``data.segmenter``); looked up
        once, not on every request."""
        return self.home is not None and (self.home / SEGMENTER_DIR / "checkpoints"
                                          / "best.pt").is_file()

    @property
    def segmenter(self) -> Any:
        """The lesion segmenter that came with the model (``RUN_DIR/segmenter/``, copied
        there from ``data.segmenter`` at training; ``export`` copies it beside the ONNX
        file), loaded on first use.

        Raises:
            DermalabError: the model needs a mask and has no segmenter.
        """
        if self._segmenter is None:
            folder = self.home / SEGMENTER_DIR if self.home is not None else None
            if folder is None or not (folder / "checkpoints" / "best.pt").is_file():
                raise DermalabError(
                    f"this model takes data.input={self.info.input_mode} and needs a lesion "
                    "mask for every image: give one, or retrain with data.segmenter=SEG_RUN "
                    "(a `dermalab segment train` run) so the model brings its segmenter")
            from dermalab.segment.predict import Segmenter

            seg = Segmenter.load(folder)
            seg.check_maps_back(folder)
            self._segmenter = seg
        return self._segmenter

    def segment(self, img: Image.Image) -> np.ndarray:
        """The lesion mask of a photo from the segmenter, at the photo's own size."""
        mask: np.ndarray = self.segmenter.photo_masks([img])[0]
        return mask

    def prepare(self, img: Image.Image, mask: np.ndarray | None = None) -> np.ndarray:
        """The model's input from a decoded, upright RGB photo, as in training
        (:mod:`dermalab.data.lesion`): resized for ``raw`` and ``raw+masked`` (which predicts
        on raw photos); for ``crop`` cropped to the lesion's box plus the trained margin from
        the full-resolution photo, then resized; for ``masked`` the background filled; for
        ``mask_channel`` the mask as a 4th channel. ``mask`` (``(H, W)`` bool at the photo's
        size) is the lesion; without one the model's segmenter draws it.

        Raises:
            DermalabError: a mask of another size than the photo, or no mask and no segmenter.
        """
        size, rmode, mode = self.info.image_size, self.info.resize_mode, self.info.input_mode
        if mode not in NEEDS_MASK:
            return np.asarray(resize_rgb(img, size, rmode), np.uint8)
        if mask is None:
            mask = self.segment(img)
        elif mask.shape != (img.height, img.width):
            raise DermalabError(f"the lesion mask is {mask.shape[1]}x{mask.shape[0]} but the "
                                f"photo is {img.width}x{img.height}")
        if mode == "crop":
            box = lesion_box(mask, self.info.crop_margin)
            return np.asarray(resize_rgb(crop_fraction(img, box), size, rmode), np.uint8)
        arr = np.asarray(resize_rgb(img, size, rmode), np.uint8)
        return apply_input(arr, resize_mask(mask, size, rmode), mode)

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

    @cached_property
    def metadata_model(self) -> MetadataModel | None:
        """The run's metadata model (``eval.metadata``), or ``None``."""
        return MetadataModel.from_json(self.info.metadata) if self.info.metadata else None

    def metadata_row(self, given: dict[str, Any] | None) -> tuple[dict[str, Any] | None,
                                                                   list[str]]:
        """A person's optional ``age``/``sex``/``site`` as this model's metadata row, and the
        fields it will weigh; ``(None, [])`` when nothing was given or the model has no
        metadata model.

        Raises:
            DermalabError: a value the model cannot take (said in one line).
        """
        mm = self.metadata_model
        if mm is None or not given:
            return None, []
        row = mm.parse(**given)
        return row, mm.given(row)

    def calibrated(self, logits: np.ndarray, metadata: list[dict[str, Any]] | None = None
                   ) -> np.ndarray:
        """The served probabilities (:meth:`dermalab.core.decision.Decision.probabilities`):
        ``softmax(z / T - tau log pi)``, with ``metadata`` (a row per image, any fields
        missing) and a metadata model ``softmax(z / T + w r(m) - tau log pi)``."""
        mm = self.metadata_model if metadata is not None else None
        return self.info.decision.probabilities(logits, mm, metadata if mm else None)

    def probabilities(self, images: np.ndarray, tta: bool = False,
                      metadata: list[dict[str, Any]] | None = None) -> np.ndarray:
        """Served class probabilities (see :meth:`calibrated`)."""
        return self.calibrated(self.logits(images, tta), metadata)

    def predict(self, sources: list[str], top_k: int = 3, tta: bool = False
                ) -> list[dict[str, Any]]:
        """Top-k calibrated predictions per image path (errors raise, naming the file)."""
        images = np.stack([self.preprocess(s) for s in sources])
        probs = self.probabilities(images, tta)
        return [self.describe(src, p, top_k) for src, p in zip(sources, probs, strict=True)]

    def predict_each(self, sources: list[str], top_k: int = 3, tta: bool = False,
                     masks_dir: str | None = None, metadata: dict[str, Any] | None = None
                     ) -> list[dict[str, Any]]:
        """Like :meth:`predict`, but a bad image does not stop the others: its entry is
        ``{"image": path, "error": "what is wrong"}``; the good ones are analysed together.
        ``masks_dir``: lesion masks for a lesion-aware model (``<stem>_segmentation.png``,
        ``<stem>_mask.png`` or ``<stem>.png``); an image without one is segmented.
        ``metadata``: one patient's metadata row, weighed for every image (see
        :meth:`calibrated`)."""
        out: list[dict[str, Any]] = []
        good: list[tuple[int, np.ndarray]] = []
        lesions: dict[int, dict[str, Any]] = {}
        for i, src in enumerate(sources):
            try:
                if self.info.input_mode in NEEDS_MASK:
                    x, lesions[i] = self._with_lesion(src, masks_dir)
                    good.append((i, x))
                else:
                    good.append((i, self.preprocess(src)))
                out.append({})
            except DermalabError as exc:
                out.append({"image": src, "error": str(exc)})
        if good:
            rows = [metadata] * len(good) if metadata else None
            probs = self.probabilities(np.stack([img for _, img in good]), tta, rows)
            used = (self.metadata_model.given(metadata)
                    if metadata and self.metadata_model is not None else [])
            for (i, _), p in zip(good, probs, strict=True):
                out[i] = self.describe(sources[i], p, top_k, used_metadata=bool(used))
                if rows:
                    out[i]["metadata_used"] = used
                if i in lesions:
                    out[i]["lesion"] = lesions[i]
        return out

    def describe(self, image: str, probs: np.ndarray, top_k: int = 3,
                 used_metadata: bool = False) -> dict[str, Any]:
        """The served answer: ``{"image", "top": [{"class", "name", "probability"}],
        "uncertain", "uncertain_threshold"}`` and, for a model with malignant classes,
        ``malignant_score``, ``malignant_threshold``, ``malignant_flag``."""
        d = self.info.decision
        ans = d.answer(probs, self.info.classes, max(1, min(top_k, len(probs))), used_metadata)
        top = [{"class": self.info.classes[i],
                "name": self.info.display_names.get(self.info.classes[i],
                                                    self.info.classes[i]),
                "probability": float(probs[i])} for i in ans.order]
        out: dict[str, Any] = {"image": image, "top": top, "uncertain": ans.uncertain,
                               "uncertain_threshold": d.uncertain_line(used_metadata)}
        if ans.malignant_probability is not None:
            out["malignant_score"] = ans.malignant_probability
            out["malignant_threshold"] = d.malignant_threshold
            out["malignant_flag"] = ans.malignant_flag
        return out


def find_mask(folder: str, image: str) -> np.ndarray | None:
    """The lesion mask of ``image`` in ``folder`` (see :meth:`Predictor.predict_each`)."""
    from dermalab.data.masks import read_mask

    stem = Path(image).stem
    for name in (f"{stem}_segmentation.png", f"{stem}_mask.png", f"{stem}.png"):
        if (Path(folder) / name).is_file():
            return read_mask(Path(folder) / name)
    return None
