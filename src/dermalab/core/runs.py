"""The one owner of a run directory: its paths, checkpoints, saved predictions and the
description of the model it holds.

A run directory, as ``dermalab train`` writes it::

    RUN_DIR/config.yaml          the resolved experiment config
    RUN_DIR/splits.csv           the split, reused by reruns and resumes
    RUN_DIR/history.csv          one row per epoch
    RUN_DIR/metrics.json         test metrics; written last, its presence marks a finished run
    RUN_DIR/decision.json        the served decision (core.decision) and metadata model, fitted
                                 on validation after training (best.pt is never rewritten)
    RUN_DIR/checkpoints/{best,last}.pt
    RUN_DIR/predictions_{val,test}.{npz,csv}
    RUN_DIR/plots/*.png, RUN_DIR/report.html
    RUN_DIR/serving/             the web service's thresholds, detectors and history
    RUN_DIR/export/              ONNX model + model.json
    RUN_DIR/explain/             Grad-CAM overlays of ``dermalab explain``
    RUN_DIR/members/m<i>/        an ensemble's member runs (``model.members`` > 1)

Nothing else in dermalab builds one of these paths from a string: it asks :class:`RunPaths`.

Checkpoints describe themselves in plain types (state dicts, config dict, class names, backbone,
normalisation, image size), so ``torch.load(weights_only=True)`` reads them and a predictor
needs nothing else. They are written to a temporary file and renamed over the old one: a
kill -9 mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dermalab.core.atomic import atomic_path, atomic_write_text
from dermalab.core.config import ExperimentConfig, from_dict
from dermalab.core.decision import Decision
from dermalab.core.errors import RunNotFoundError
from dermalab.core.models import build_for_inference

CHECKPOINT_FORMAT = 1
HISTORY_KEYS = (
    "epoch", "lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
    "val_balanced_accuracy", "val_macro_f1", "val_weighted_precision", "val_weighted_recall",
    "val_roc_auc_macro", "train_images_per_s", "epoch_seconds", "frozen_body",
)


SEGMENTER_DIR = "segmenter"


@dataclass(frozen=True)
class RunPaths:
    """The files of a run directory (see the module docstring)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))  # accept str too

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def splits(self) -> Path:
        return self.root / "splits.csv"

    @property
    def history(self) -> Path:
        return self.root / "history.csv"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def decision(self) -> Path:
        """The served decision and metadata model (``evaluate.finalize`` writes it)."""
        return self.root / "decision.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.pt"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def skipped_inputs(self) -> Path:
        return self.root / "skipped_inputs.json"

    @property
    def serving(self) -> Path:
        return self.root / "serving"

    @property
    def export(self) -> Path:
        return self.root / "export"

    @property
    def explain(self) -> Path:
        return self.root / "explain"

    @property
    def segmenter(self) -> Path:
        """A copy of the lesion segmenter a lesion-aware model needs at inference (a
        segmentation run's ``checkpoints/best.pt``), written at training time."""
        return self.root / SEGMENTER_DIR

    @property
    def members(self) -> Path:
        """An ensemble's member runs (``model.members`` > 1)."""
        return self.root / "members"

    def member(self, index: int) -> Path:
        """The run directory of an ensemble's member ``index`` (0-based)."""
        return self.members / f"m{index}"

    def predictions(self, split: str, suffix: str = "npz") -> Path:
        """``predictions_{split}.npz`` (arrays) or ``.csv`` (readable)."""
        return self.root / f"predictions_{split}.{suffix}"

    @property
    def is_finished(self) -> bool:
        """``metrics.json`` is written last by the pipeline: it marks a finished run."""
        return self.metrics.is_file()

    def require_model(self, command: str = "this command") -> Path:
        """The best checkpoint, or a one-line error saying what is missing and what to run."""
        if self.best.is_file():
            return self.best
        if not self.root.is_dir():
            raise RunNotFoundError(f"{self.root}: no such run directory; {command} needs a "
                                   "folder written by `dermalab train`")
        if self.last.is_file():
            raise RunNotFoundError(f"{self.root}: the run has no best checkpoint yet (it "
                                   f"stopped early); finish it with `dermalab train --resume "
                                   f"{self.root}`")
        raise RunNotFoundError(f"{self.root}: not a dermalab run (checkpoints/best.pt is "
                               "missing); train one with `dermalab train -c CONFIG --out "
                               f"{self.root}`")


# -- checkpoints -------------------------------------------------------------------------------
def save_checkpoint(payload: dict[str, Any], path: str | Path) -> None:
    """Atomically write ``payload`` (plain types and tensors) with ``torch.save``."""
    with atomic_path(path, fsync=True) as tmp, open(tmp, "wb") as f:
        torch.save({"format": CHECKPOINT_FORMAT, **payload}, f)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (no arbitrary code from the file).

    Raises:
        RunNotFoundError: no file at ``path``, or not a dermalab checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise RunNotFoundError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or foreign file: say which one
        raise RunNotFoundError(f"{path}: cannot be read as a checkpoint ({exc.__class__.__name__})"
                               ) from None
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise RunNotFoundError(f"{path}: not a dermalab checkpoint (format {CHECKPOINT_FORMAT})")
    return obj


# -- what a model needs besides its weights ----------------------------------------------------
@dataclass
class ModelInfo:
    """What feeding and reading a trained model takes besides its weights: classes,
    normalisation, input size, and the served decision (temperature, prior shift, "not sure"
    and malignant thresholds: :class:`~dermalab.core.decision.Decision`).

    One schema for the training checkpoint (:meth:`to_checkpoint`/:meth:`from_checkpoint`) and
    the exported ``model.json`` (:meth:`to_json`/:meth:`from_json`), so the PyTorch and ONNX
    paths cannot disagree on it. The decision and metadata model of a run live in its
    ``decision.json`` (:func:`load_run` adds them), not in the checkpoint training wrote.
    """

    classes: list[str]
    display_names: dict[str, str]
    mean: list[float]
    std: list[float]
    image_size: int
    resize_mode: str
    backbone: str
    decision: Decision = field(default_factory=Decision)
    input_mode: str = "raw"  # data.input: raw | masked | crop | raw+masked | mask_channel
    crop_margin: float = 0.1  # data.crop_margin (input_mode crop)
    image_type: str = "dermoscopic"  # data.image_type: dermoscopic | clinical
    metadata: dict[str, Any] | None = None  # a fitted MetadataModel (eval.metadata), as JSON
    members: int = 1  # > 1: an ensemble of that many (dermalab.core.models.Ensemble)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def in_chans(self) -> int:
        """Input channels: 4 with a lesion-mask channel, else 3."""
        return 4 if self.input_mode == "mask_channel" else 3

    @property
    def temperature(self) -> float:
        """The decision's temperature ``T``."""
        return self.decision.temperature

    def to_json(self) -> dict[str, Any]:
        """Plain dict for ``model.json``."""
        return {"format": 2, **asdict(self)}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ModelInfo:
        """Read ``model.json`` (format 1, before stored decisions: temperature and malignant
        threshold at the top level, the plain posterior)."""
        keys = set(cls.__dataclass_fields__) - {"decision"}
        info = cls(**{k: v for k, v in obj.items() if k in keys})
        info.decision = (Decision.from_json(obj["decision"]) if obj.get("decision") else
                         Decision.legacy(float(obj.get("temperature", 1.0)),
                                         obj.get("malignant")))
        return info

    def to_checkpoint(self) -> dict[str, Any]:
        """The checkpoint keys that describe the model (the inverse of
        :meth:`from_checkpoint`); the decision is not among them (``decision.json``)."""
        return {"classes": list(self.classes), "display_names": dict(self.display_names),
                "normalization": {"mean": list(self.mean), "std": list(self.std)},
                "image_size": self.image_size, "resize_mode": self.resize_mode,
                "backbone": self.backbone, "input_mode": self.input_mode,
                "crop_margin": self.crop_margin, "image_type": self.image_type,
                "members": self.members}

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any]) -> ModelInfo:
        """From a training checkpoint (checkpoints of runs finalised before decision.json
        carry their temperature, malignant threshold and metadata model themselves)."""
        return cls(
            classes=list(ckpt["classes"]),
            display_names=dict(ckpt["display_names"]),
            mean=[float(v) for v in ckpt["normalization"]["mean"]],
            std=[float(v) for v in ckpt["normalization"]["std"]],
            image_size=int(ckpt["image_size"]),
            resize_mode=str(ckpt["resize_mode"]),
            backbone=str(ckpt["backbone"]),
            decision=Decision.legacy(float(ckpt.get("temperature", 1.0)), ckpt.get("malignant")),
            input_mode=str(ckpt.get("input_mode", "raw")),  # runs from before data.input
            crop_margin=float(ckpt.get("crop_margin", 0.1)),
            image_type=str(ckpt.get("image_type", "dermoscopic")),  # runs from before it
            metadata=ckpt.get("metadata_model"),
            members=int(ckpt.get("members", 1)),  # runs from before ensembles
        )


def write_decision(paths: RunPaths, decision: Decision, metadata: dict[str, Any] | None
                   ) -> None:
    """``decision.json``: the served decision and the metadata model, fitted on validation."""
    atomic_write_text(paths.decision, json.dumps(
        {"format": 1, "decision": decision.to_json(), "metadata_model": metadata}, indent=2))


def read_decision(paths: RunPaths, info: ModelInfo) -> None:
    """Put a run's stored decision and metadata model into ``info`` (in place). A run
    finalised before ``decision.json`` keeps what its checkpoint held, with the "not sure"
    thresholds of its ``serving/serving.json``."""
    if paths.decision.is_file():
        obj = json.loads(paths.decision.read_text())
        info.decision = Decision.from_json(obj["decision"])
        info.metadata = obj.get("metadata_model")
        return
    legacy = paths.serving / "serving.json"
    if legacy.is_file():
        d = info.decision
        info.decision = Decision.legacy(
            d.temperature, {"classes": d.malignant_classes, "threshold": d.malignant_threshold},
            json.loads(legacy.read_text()))


@dataclass
class LoadedRun:
    """A trained model and everything needed to feed it (the checkpoint and ``decision.json``).

    ``info`` is read when the run is loaded: its decision is the one stored then (``finalize``
    fits a new one into ``decision.json``).
    """

    paths: RunPaths
    model: nn.Module
    info: ModelInfo
    config: ExperimentConfig
    checkpoint: dict[str, Any]


def load_run(run_dir: str | Path, which: str = "best", command: str = "this command"
             ) -> LoadedRun:
    """Load ``run_dir/checkpoints/{which}.pt`` into an eval-mode model.

    Raises:
        RunNotFoundError: ``run_dir`` is not a run with that checkpoint (one line saying what
            to run instead).
    """
    paths = RunPaths(Path(run_dir))
    path = paths.require_model(command) if which == "best" else paths.checkpoints / f"{which}.pt"
    ckpt = load_checkpoint(path)
    info = ModelInfo.from_checkpoint(ckpt)
    read_decision(paths, info)
    model = build_for_inference(ckpt["backbone"], len(ckpt["classes"]), in_chans=info.in_chans,
                                members=info.members)
    model.load_state_dict(ckpt["model"])
    model.eval()
    return LoadedRun(paths=paths, model=model, info=info,
                     config=from_dict(ckpt["config"]), checkpoint=ckpt)


def read_metrics(paths: RunPaths) -> dict[str, Any]:
    """``metrics.json`` of a finished run."""
    if not paths.metrics.is_file():
        raise RunNotFoundError(f"{paths.root}: the run is not finished (no metrics.json); "
                               f"finish it with `dermalab train --resume {paths.root}`")
    out: dict[str, Any] = json.loads(paths.metrics.read_text())
    return out


def write_metrics(paths: RunPaths, metrics: dict[str, Any]) -> None:
    """``metrics.json`` marks a finished run (reuse, compare): never leave half of one."""
    atomic_write_text(paths.metrics, json.dumps(metrics, indent=2))


# -- predictions and history on disk -----------------------------------------------------------
@dataclass
class Predictions:
    """Model outputs on one split."""

    ids: list[str]
    targets: np.ndarray
    logits: np.ndarray
    tta_logits: np.ndarray | None = None

    def save(self, path: Path) -> None:
        """Write as ``.npz`` (no pickles)."""
        arrays: dict[str, Any] = {"ids": np.asarray(self.ids, dtype=str),
                                  "targets": self.targets, "logits": self.logits}
        if self.tta_logits is not None:
            arrays["tta_logits"] = self.tta_logits
        np.savez(path, **arrays)

    @classmethod
    def load(cls, path: Path) -> Predictions:
        """Read a file written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as z:
            return cls([str(i) for i in z["ids"]], z["targets"].astype(np.int64),
                       z["logits"].astype(np.float64),
                       z["tta_logits"].astype(np.float64) if "tta_logits" in z.files else None)


def save_predictions(paths: RunPaths, split: str, preds: Predictions, probs: np.ndarray,
                     classes: list[str]) -> None:
    """``predictions_{split}.npz`` (for calibration and galleries) and a readable ``.csv``
    (for audits: one row per sample with its label, prediction and probabilities)."""
    preds.save(paths.predictions(split))
    with open(paths.predictions(split, "csv"), "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["sample_id", "label", "pred", *[f"p_{c}" for c in classes]])
        for sid, t, p in zip(preds.ids, preds.targets, probs, strict=True):
            w.writerow([sid, classes[int(t)], classes[int(p.argmax())],
                        *[f"{v:.6f}" for v in p]])


def write_history(paths: RunPaths, history: list[dict[str, Any]],
                  keys: tuple[str, ...] = HISTORY_KEYS) -> None:
    """One row per epoch (rewritten whole each epoch, atomically)."""
    with atomic_path(paths.history) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(keys), extrasaction="ignore",
                           lineterminator="\n")
        w.writeheader()
        w.writerows(history)
