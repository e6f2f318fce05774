"""The trust stage of a run: calibrate, measure, explain, and write the report.

Runs at the end of ``dermalab train`` and again on ``dermalab report RUN_DIR`` (idempotent):
fits the temperature on validation, stores it (and the malignant operating threshold) in
``best.pt``, adds calibration/operating-point/subgroup results to ``metrics.json``, draws ROC
and reliability plots, a Grad-CAM gallery of the worst test mistakes, and ``report.html``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from dermalab import plots
from dermalab.analysis import Predictions, analyze
from dermalab.atomic import atomic_write_text
from dermalab.calibration import calibrated_probs
from dermalab.data.prepare import PreparedData, prepare_data
from dermalab.engine.checkpoint import load_checkpoint, save_checkpoint
from dermalab.engine.evaluate import LoadedRun, load_run


def worst_mistakes(test: Predictions, probs: np.ndarray, n: int) -> list[int]:
    """Indices of the ``n`` misclassified test images the model was most confident about."""
    pred = probs.argmax(1)
    wrong = np.flatnonzero(pred != test.targets)
    order = wrong[np.argsort(-probs[wrong, pred[wrong]], kind="stable")]
    return [int(i) for i in order[:n]]


def gallery(run: LoadedRun, data: PreparedData, test: Predictions, probs: np.ndarray, n: int,
            method: str, out_png: Path) -> list[dict[str, Any]]:
    """Grad-CAM overlays (for the predicted class) of the worst mistakes, as one grid PNG."""
    from dermalab.explain import cam_maps, overlay

    idx = worst_mistakes(test, probs, n)
    if not idx:
        return []
    images = np.stack([data.store.get(test.ids[i]) for i in idx])
    pred = probs.argmax(1)
    maps, _ = cam_maps(run.model, run.info.backbone, images, run.info.mean, run.info.std,
                       [int(pred[i]) for i in idx], method)
    shown, titles, entries = [], [], []
    for j, i in enumerate(idx):
        true_c, pred_c = run.info.classes[test.targets[i]], run.info.classes[pred[i]]
        conf = float(probs[i, pred[i]])
        shown.append(overlay(images[j], maps[j], size=max(160, images.shape[1])))
        titles.append(f"{test.ids[i][-24:]}\ntrue {true_c} / pred {pred_c} ({conf:.2f})")
        entries.append({"sample_id": test.ids[i], "true": true_c, "pred": pred_c,
                        "confidence": conf})
    plots.save(plots.image_grid(shown, titles), str(out_png))
    return entries


def _predictions(run: LoadedRun, data: PreparedData, split: str, run_dir: Path) -> Predictions:
    """Saved predictions of a split, or (runs from older versions) computed and saved now."""
    path = run_dir / f"predictions_{split}.npz"
    if path.is_file():
        return Predictions.load(path)
    from dermalab.data.dataset import ImageDataset, make_loader
    from dermalab.data.transforms import eval_transform
    from dermalab.engine.fit import make_accelerator
    from dermalab.engine.loop import predict

    ids = [s.sample_id for s in data.samples(split)]
    index = {c: i for i, c in enumerate(run.info.classes)}
    targets = [index[s.label] for s in data.samples(split)]
    accelerator = make_accelerator(run.config.train)
    loader = make_loader(ImageDataset(data.store, ids, targets,
                                      eval_transform(run.info.mean, run.info.std)),
                         run.config.train.eval_batch_size)
    logits, y = predict(run.model, loader, accelerator)
    tta = predict(run.model, loader, accelerator, tta=True)[0] if run.config.eval.tta else None
    preds = Predictions(ids, y, logits.astype(np.float64), tta)
    preds.save(path)
    return preds


def _cached_batches(data: PreparedData, ids: list[str], batch: int) -> Iterator[np.ndarray]:
    """The cached uint8 images of ``ids``, ``batch`` at a time (never all in memory)."""
    for i in range(0, len(ids), batch):
        yield np.stack([data.store.get(s) for s in ids[i:i + batch]])


def features_of(run: LoadedRun, data: PreparedData, ids: list[str], batch: int = 64
                ) -> np.ndarray:
    """Penultimate features of cached images (eval mode, no augmentation)."""
    import torch

    from dermalab.explain import to_input
    from dermalab.models import FeaturesAndLogits

    both = FeaturesAndLogits(run.model).eval()
    out = []
    with torch.no_grad():
        for images in _cached_batches(data, ids, batch):
            out.append(both(to_input(images, run.info.mean, run.info.std))[1].double().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0))


def _colour_of(data: PreparedData, ids: list[str], batch: int = 256) -> np.ndarray:
    """Colour statistics of cached images, ``batch`` at a time."""
    from dermalab.serve.ood import colour_statistics

    return np.concatenate([colour_statistics(images)
                           for images in _cached_batches(data, ids, batch)])


def fit_serving(run: LoadedRun, data: PreparedData, val: Predictions, temperature: float,
                run_dir: Path, max_train: int = 3000) -> dict[str, Any]:
    """Fit the web service's "not skin" detector and "not sure" threshold on this run's data
    (train features for the detector, validation for both thresholds); writes
    ``RUN_DIR/serving/ood.npz`` and ``serving.json``."""
    from dermalab.serve.ood import fit_mahalanobis, selective_threshold

    cfg = run.config.eval
    train = data.samples("train")
    rng = np.random.default_rng(0)
    if len(train) > max_train:
        train = [train[i] for i in sorted(rng.choice(len(train), max_train, replace=False))]
    index = {c: i for i, c in enumerate(run.info.classes)}
    f_train = features_of(run, data, [s.sample_id for s in train])
    f_val = features_of(run, data, val.ids)
    # Two detectors share the false-positive budget: deep features and colour statistics.
    ood = fit_mahalanobis(f_train, np.array([index[s.label] for s in train]), f_val,
                          cfg.ood_target_fpr / 2)
    c_train = _colour_of(data, [s.sample_id for s in train])
    c_val = _colour_of(data, val.ids)
    colour = fit_mahalanobis(c_train, np.zeros(len(c_train), dtype=int), c_val,
                             cfg.ood_target_fpr / 2, standardize=True)
    probs = calibrated_probs(val.logits, temperature)
    t_unsure = selective_threshold(probs.max(1), probs.argmax(1) == val.targets,
                                   cfg.uncertain_target_accuracy)
    folder = run_dir / "serving"
    folder.mkdir(exist_ok=True)
    ood.save(folder / "ood.npz")
    colour.save(folder / "ood_colour.npz")
    out = {"uncertain_threshold": t_unsure,
           "uncertain_target_accuracy": cfg.uncertain_target_accuracy,
           "val_uncertain_rate": float(np.mean(probs.max(1) < t_unsure)),
           "ood_threshold": ood.threshold, "ood_target_fpr": cfg.ood_target_fpr,
           "ood_colour_threshold": colour.threshold,
           "val_ood_rate": float(np.mean(ood.is_ood(f_val) | colour.is_ood(c_val))),
           "ood_fit_images": len(train)}
    atomic_write_text(folder / "serving.json", json.dumps(out, indent=2))
    return out


def finalize_run(
    run_dir: str | Path,
    *,
    data: PreparedData | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Calibration, operating point, subgroups, plots, gallery and report for a finished run.

    Returns the updated ``metrics.json`` content.
    """
    from dermalab.report import write_report

    run_dir = Path(run_dir)
    run = load_run(run_dir)
    cfg = run.config
    if data is None:
        data = prepare_data(cfg.data, run.info.image_size, split_path=run_dir / "splits.csv",
                            progress=progress)
    val = _predictions(run, data, "val", run_dir)
    test = _predictions(run, data, "test", run_dir)
    by_id = {s.sample_id: s for s in data.source.samples}
    meta = [dict(by_id[i].meta) if i in by_id else {} for i in test.ids]
    extra = analyze(val, test, run.info.classes, cfg.eval, meta)

    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics.update(extra)
    # The temperature and threshold travel with the model: every later use applies them.
    best_path = run_dir / "checkpoints" / "best.pt"
    ckpt = load_checkpoint(best_path)
    ckpt.pop("format", None)
    ckpt["temperature"] = extra["temperature"]
    mal = extra.get("malignant")
    ckpt["malignant"] = ({"classes": mal["classes"], "threshold": mal["threshold"]}
                         if mal else None)
    save_checkpoint(ckpt, best_path)

    plot_dir = run_dir / "plots"
    plot_dir.mkdir(exist_ok=True)
    t = extra["temperature"]
    before, after = calibrated_probs(test.logits), calibrated_probs(test.logits, t)
    plots.save(plots.roc_curves(test.targets, after, run.info.classes), str(plot_dir / "roc.png"))
    plots.save(plots.reliability_diagram(
        [("before temperature scaling", before, test.targets, extra["ece_before"]),
         (f"after (T = {t:.2f})", after, test.targets, extra["ece_after"])],
        cfg.eval.ece_bins), str(plot_dir / "reliability.png"))
    if cfg.eval.gallery > 0:
        metrics["gallery"] = gallery(run, data, test, after, cfg.eval.gallery,
                                     cfg.eval.cam_method,
                                     plot_dir / "misclassified_gradcam.png")
    if cfg.eval.serving:
        metrics["serving"] = fit_serving(run, data, val, t, run_dir)
    # metrics.json marks a finished run (fit_or_reuse, compare): never leave half of one.
    atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2))
    if cfg.eval.report:
        write_report(run_dir)
    return metrics
