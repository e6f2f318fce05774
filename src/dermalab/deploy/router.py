"""The image-type router: is an upload a dermoscopic close-up, an ordinary (clinical/phone)
photo of skin, or not skin at all? The web service sends each photo to the model of its type.

Features: the 1,280 pooled features of an ImageNet-pretrained EfficientNet-Lite0 (not
fine-tuned; the generic "what is in this picture" embedding, exported to ONNX beside the
router) joined with the 23 colour statistics of :func:`dermalab.deploy.ood.colour_statistics`
(printed pages and slides differ from skin most in colour). Classifier: multinomial logistic
regression on standardised features with balanced class weights (each type counts equally
however many images it has; the non-skin one can weigh more, ``not_skin_weight``),
L2-regularised (``C``).

Fitted from the training split of each served run (its image type from the run) and the
``fit`` set of :mod:`dermalab.data.negatives`; the reported confusion is on the runs'
validation splits, which fitting never saw. Files: ``router.onnx`` (the embedding),
``router.npz`` (scaler and weights, no pickles), ``router.json`` (what it is and how it did).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dermalab.core.atomic import atomic_path, atomic_write_text
from dermalab.core.errors import DermalabError
from dermalab.data.images import normalize_batch
from dermalab.deploy.ood import colour_statistics

TYPES = ("dermoscopic", "clinical", "not_skin")
BACKBONE = "tf_efficientnet_lite0"
SIZE = 128


def router_input(image: Image.Image | np.ndarray, size: int = SIZE) -> np.ndarray:
    """An image squashed to ``size`` x ``size`` RGB uint8 (the whole frame: the type of a
    photo shows in its framing as much as in its centre)."""
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    if img.mode != "RGB":
        img = img.convert("RGB")
    out: np.ndarray = np.asarray(img.resize((size, size), Image.Resampling.BILINEAR), np.uint8)
    return out


@dataclass(frozen=True)
class Route:
    """Where one photo goes: its ``image_type`` (one of :data:`TYPES`) and the probabilities."""

    image_type: str
    probabilities: dict[str, float]


class ImageRouter:
    """A fitted router (see the module docstring); thread-safe (ONNX Runtime sessions are)."""

    def __init__(self, folder: Path, session: Any, meta: dict[str, Any],
                 weights: Mapping[str, np.ndarray]) -> None:
        self.folder, self.session, self.meta = folder, session, meta
        self.types: list[str] = list(meta["types"])
        self.size = int(meta["size"])
        self.mean, self.std = list(meta["mean"]), list(meta["std"])
        self.shift, self.scale = weights["shift"], weights["scale"]
        self.coef, self.intercept = weights["coef"], weights["intercept"]

    @staticmethod
    def check(folder: str | Path) -> list[Path]:
        """The router files of ``folder`` (onnx, npz, json); a one-line error when it is not
        a router folder."""
        folder = Path(folder)
        need = [folder / n for n in ("router.onnx", "router.npz", "router.json")]
        missing = [p.name for p in need if not p.is_file()]
        if missing:
            raise DermalabError(f"{folder}: not a router folder (missing {', '.join(missing)}); "
                                "fit one with `dermalab router fit RUN_DIR... --out DIR`")
        return need

    @classmethod
    def load(cls, folder: str | Path, threads: int = 1) -> ImageRouter:
        """Read a router folder (see :meth:`check`)."""
        need = cls.check(folder)
        session = _session(need[0], threads)
        with np.load(need[1], allow_pickle=False) as z:
            weights = {k: z[k].astype(np.float64) for k in ("shift", "scale", "coef",
                                                            "intercept")}
        return cls(Path(folder), session, json.loads(need[2].read_text("utf-8")), weights)

    def features(self, images: np.ndarray) -> np.ndarray:
        """``(N, S, S, 3)`` uint8 router inputs -> embedding + colour statistics."""
        x = normalize_batch(images, self.mean, self.std)
        emb = self.session.run(None, {"image": x})[0]
        return np.concatenate([np.asarray(emb, np.float64), colour_statistics(images)], axis=1)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """``(N, len(types))`` softmax probabilities."""
        return predict_proba(self.features(images), self.shift, self.scale, self.coef,
                             self.intercept)

    def route(self, image: Image.Image | np.ndarray) -> Route:
        """The type of one photo: the most probable one."""
        p = self.probabilities(router_input(image, self.size)[None])[0]
        return Route(self.types[int(p.argmax())],
                     {t: float(v) for t, v in zip(self.types, p, strict=True)})


def predict_proba(f: np.ndarray, shift: np.ndarray, scale: np.ndarray, coef: np.ndarray,
                  intercept: np.ndarray) -> np.ndarray:
    """Softmax of ``((f - shift) / scale) @ coef.T + intercept``, numerically stable."""
    z = ((f - shift) / scale) @ coef.T + intercept
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out


def export_embedder(path: Path) -> dict[str, Any]:
    """Export the ImageNet-pretrained embedding (pooled features) to ONNX at ``path``;
    returns its normalisation and the weights' origin."""
    import torch

    from dermalab.core.config import ModelConfig
    from dermalab.core.models import create_model

    model, data_cfg, origin = create_model(ModelConfig(backbone=BACKBONE, pretrained=True), 0)
    model.eval()
    with atomic_path(path) as tmp:
        torch.onnx.export(model, (torch.randn(2, 3, SIZE, SIZE),), str(tmp), dynamo=False,
                          opset_version=17, input_names=["image"], output_names=["features"],
                          dynamic_axes={"image": {0: "batch"}, "features": {0: "batch"}})
    return {"mean": list(data_cfg["mean"]), "std": list(data_cfg["std"]), "origin": origin}


def fit_router(fit: Mapping[str, Sequence[np.ndarray]], val: Mapping[str, Sequence[np.ndarray]],
               out: str | Path, *, c: float = 0.5, sources: Mapping[str, str] | None = None,
               closeups: Sequence[float] = (),
               val_closeup: Mapping[str, Sequence[np.ndarray]] | None = None,
               not_skin_weight: float = 1.0) -> dict[str, Any]:
    """Fit and write a router.

    Args:
        fit: image type -> router inputs (``router_input``) to learn from; two or three of
            :data:`TYPES`, ``not_skin`` required.
        val: image type -> held-out router inputs for the reported confusion matrix.
        out: the router folder.
        c: inverse L2 strength of the logistic regression.
        sources: image type -> where its images came from (recorded in ``router.json``).
        closeups: the centre-crop shares ``fit`` holds besides whole frames (recorded).
        val_closeup: image type -> held-out close-up views, confused separately.
        not_skin_weight: the non-skin class's weight over the balanced one (each type
            counting equally). Above 1 when the skin types hold close-up views: the non-skin
            set is a few dozen source photos and rendered pages, and close-ups of skin cover
            textures some non-skin photos share (petals, stained tissue).

    Returns:
        the ``router.json`` content.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import confusion_matrix
    from sklearn.utils.class_weight import compute_class_weight

    types = [t for t in TYPES if fit.get(t)]
    if "not_skin" not in types or len(types) < 2:
        raise DermalabError(f"a router needs non-skin images and at least one skin type; got "
                            f"{', '.join(types) or 'nothing'}")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    embed = export_embedder(folder / "router.onnx")
    meta: dict[str, Any] = {"format": 1, "types": types, "size": SIZE, "backbone": BACKBONE,
                            "mean": embed["mean"], "std": embed["std"],
                            "weights_origin": embed["origin"], "c": c}
    probe = ImageRouter(folder, _session(folder / "router.onnx"), meta,
                        {k: np.zeros(1) for k in ("shift", "scale", "coef", "intercept")})

    def feats(groups: Mapping[str, Sequence[np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for i, t in enumerate(types):
            imgs = list(groups.get(t, []))
            for j in range(0, len(imgs), 64):
                xs.append(probe.features(np.stack(imgs[j:j + 64])))
                ys += [i] * len(imgs[j:j + 64])
        return np.concatenate(xs), np.asarray(ys)

    x, y = feats(fit)
    shift, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    # balanced class weights, the non-skin one times not_skin_weight
    balanced = compute_class_weight("balanced", classes=np.arange(len(types)), y=y)
    balanced[types.index("not_skin")] *= not_skin_weight
    clf = LogisticRegression(C=c, class_weight=dict(enumerate(balanced)), max_iter=3000)
    clf.fit((x - shift) / scale, y)
    weights = {"shift": shift, "scale": scale, "coef": clf.coef_, "intercept": clf.intercept_}
    if len(types) == 2:  # sklearn's binary form: one row for class 1; make it a 2-way softmax
        weights["coef"] = np.concatenate([-clf.coef_ / 2, clf.coef_ / 2])
        weights["intercept"] = np.concatenate([-clf.intercept_ / 2, clf.intercept_ / 2])
    meta["fit_images"] = {t: len(fit.get(t, [])) for t in types}
    meta["sources"] = dict(sources or {})
    meta["closeups"] = [float(f) for f in closeups]
    meta["not_skin_weight"] = float(not_skin_weight)
    for key, held_out in (("val", val), ("val_closeup", val_closeup or {})):
        if any(held_out.get(t) for t in types):
            xv, yv = feats(held_out)
            pred = predict_proba(xv, **weights).argmax(1)
            cm = confusion_matrix(yv, pred, labels=range(len(types)))
            meta[key] = {"images": {t: int((yv == i).sum()) for i, t in enumerate(types)},
                         "accuracy": float((pred == yv).mean()),
                         "confusion": {"rows_true_cols_predicted": types,
                                       "matrix": cm.tolist()}}
    with atomic_path(folder / "router.npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, shift=np.asarray(weights["shift"], np.float32),
                 scale=np.asarray(weights["scale"], np.float32),
                 coef=np.asarray(weights["coef"], np.float32),
                 intercept=np.asarray(weights["intercept"], np.float32))
    atomic_write_text(folder / "router.json", json.dumps(meta, indent=2))
    return meta


def _session(path: Path, threads: int = 0) -> Any:
    """An ONNX Runtime CPU session; ``threads`` intra-op threads (0: ONNX Runtime's default)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
