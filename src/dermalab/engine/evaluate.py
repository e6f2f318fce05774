"""Load a trained run and evaluate its best checkpoint on any split or another dataset."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dermalab.calibration import calibrated_probs, expected_calibration_error, nll
from dermalab.config import ExperimentConfig, from_dict, replace
from dermalab.data.dataset import ImageDataset, make_loader
from dermalab.data.prepare import prepare_data
from dermalab.data.transforms import eval_transform
from dermalab.engine.checkpoint import load_checkpoint
from dermalab.engine.fit import make_accelerator
from dermalab.engine.loop import predict
from dermalab.errors import DataError
from dermalab.metrics import classification_metrics
from dermalab.model_info import ModelInfo
from dermalab.models import build_for_inference


@dataclass
class LoadedRun:
    """A trained model and everything needed to feed it (from the checkpoint alone).

    ``info`` is read when the run is loaded: its temperature and malignant threshold are those
    the checkpoint held then (``finalize`` fits new ones into ``checkpoint``).
    """

    model: nn.Module
    info: ModelInfo
    config: ExperimentConfig
    checkpoint: dict[str, Any]


def load_run(run_dir: str | Path, which: str = "best") -> LoadedRun:
    """Load ``run_dir/checkpoints/{which}.pt`` into an eval-mode model."""
    ckpt = load_checkpoint(Path(run_dir) / "checkpoints" / f"{which}.pt")
    model = build_for_inference(ckpt["backbone"], len(ckpt["classes"]))
    model.load_state_dict(ckpt["model"])
    model.eval()
    return LoadedRun(model=model, info=ModelInfo.from_checkpoint(ckpt),
                     config=from_dict(ckpt["config"]), checkpoint=ckpt)


def evaluate_run(
    run_dir: str | Path,
    *,
    data: str | None = None,
    split: str = "test",
    progress: bool = False,
    tta: bool = False,
) -> dict[str, Any]:
    """Metrics of a run's best checkpoint.

    Args:
        run_dir: a directory written by ``dermalab train``.
        data: another dataset with the same classes (or a subset of them); default: the run's.
        split: ``train`` | ``val`` | ``test`` | ``all``. With another dataset, its own split is
            made with the run's split settings (or use ``all``).
        tta: average the logits over flip views (test-time augmentation).

    Besides the classification metrics, reports ECE and NLL with and without the run's
    temperature (``ece_raw``/``ece``, ``nll_raw``/``nll``).
    """
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    cfg = run.config
    overrides = []
    split_path: Path | None = run_dir / "splits.csv"
    if data is not None:
        # Another dataset: detect its format and make its own split; the class map stays, so
        # its labels are mapped onto the model's classes the same way.
        overrides += [f"data.source={data}", "data.format=auto", "data.split_file=null",
                      "data.image_dirs=[]"]
        split_path = None
    cfg = replace(cfg, overrides) if overrides else cfg
    prepared = prepare_data(cfg.data, run.info.image_size, split_path=split_path, progress=progress)
    unknown = sorted(set(prepared.classes) - set(run.info.classes))
    if unknown:
        raise DataError(f"dataset has classes the model does not know: {unknown} "
                        f"(model classes: {run.info.classes}); map them with data.class_map")
    index = {c: i for i, c in enumerate(run.info.classes)}
    splits = ("train", "val", "test") if split == "all" else (split,)
    ids, targets = [], []
    for sp in splits:
        for s in prepared.samples(sp):
            ids.append(s.sample_id)
            targets.append(index[s.label])
    if not ids:
        raise DataError(f"split '{split}' is empty")
    accelerator = make_accelerator(cfg.train)
    loader = accelerator.prepare(make_loader(
        ImageDataset(prepared.store, ids, targets, eval_transform(run.info.mean, run.info.std)),
        cfg.train.eval_batch_size))
    model = accelerator.prepare(run.model)
    logits, y = predict(model, loader, accelerator, progress=progress, tta=tta)
    probs = calibrated_probs(logits)
    out = classification_metrics(y, probs, run.info.classes)
    t = run.info.temperature
    bins = cfg.eval.ece_bins
    out.update({
        "tta": tta, "temperature": t,
        "ece_raw": expected_calibration_error(probs, y, bins),
        "ece": expected_calibration_error(calibrated_probs(logits, t), y, bins),
        "nll_raw": nll(logits, y), "nll": nll(logits, y, t),
    })
    out["split"] = split
    out["data"] = prepared.source.location
    with torch.no_grad():
        out["loss_ce"] = float(nn.functional.cross_entropy(torch.from_numpy(logits),
                                                           torch.from_numpy(y)))
    out["n_by_class"] = {c: int(n) for c, n in
                         zip(run.info.classes, np.bincount(y, minlength=len(run.info.classes)),
                             strict=True)}
    return out
