"""Benchmark: lesion masks. Writes ``bench/results/masks.{md,json}``.

Segmentation: ``dermalab segment train`` (U-Net on the offline ImageNet EfficientNet-Lite0) on
all of HAM10000 with its lesion masks, on the lesion-grouped split the data layer makes (80/10/10,
seed 42, no lesion in two parts), then Dice, Jaccard and the ISIC 2018 Task 1 thresholded
Jaccard on the test images, training minutes, and ms/image in PyTorch and ONNX Runtime. The
masks and the metrics are at the model's input size (the 200x150 images squashed to S x S), not
at the originals' 600x450; the ISIC 2018 winner's 0.802 thresholded Jaccard is on another test
set (the challenge's own) and at full resolution, so it is an anchor, not a like-for-like row.

Classification with lesion-aware input (``data.input`` raw / masked / crop / raw+masked /
mask_channel) at two sizes, each with the ground-truth masks and with the segmenter's
predicted masks (``dermalab segment predict SEG_RUN IMAGES --out DIR``, at each photo's size:
what a deployed model sees), one training run per row. Every run uses the segmenter's own
split (``data.split_file``), so no test image of the classifier was seen by the segmenter,
and the default recipe (``configs/ham10000_default.yaml``) cut to ``--cls-epochs`` epochs so
that the whole grid fits on 2 CPUs; the absolute numbers are therefore below the full recipe's,
and the comparison is between rows. The raw row and the best row (chosen on validation
balanced accuracy) are repeated with a second seed to show the run-to-run noise. Results are
written after every run, so an interrupted benchmark keeps what it measured and a rerun
reuses finished runs.

    .venv/bin/python bench/masks.py [--size 96] [--epochs 8] [--cls-sizes 64 96]
        [--cls-epochs 3] [--set segment.lr=...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import numpy as np
from common import HAM, ONE_MODEL, REPO, WORK, dermalab_cmd, fmt, machine, train_run, write_results

ISIC2018_WINNER_THRESHOLDED_JACCARD = 0.802
RESULT = Path(__file__).parent / "results" / "masks.json"
INPUTS = ("raw", "masked", "crop", "raw+masked", "mask_channel")
METRICS = ("balanced_accuracy", "accuracy", "macro_f1", "roc_auc_macro")


def inference_ms(run: Path, size: int, batch: int = 16, repeats: int = 10) -> dict[str, float]:
    """Median ms/image of the best segmenter, PyTorch eager and ONNX Runtime (after export)."""
    import onnxruntime as ort
    import torch

    from dermalab.segment.predict import Segmenter

    seg = Segmenter.load(run)
    subprocess.run([*dermalab_cmd(), "segment", "export", str(run)], check=True)
    x = np.random.default_rng(0).normal(size=(batch, 3, size, size)).astype(np.float32)
    sess = ort.InferenceSession(str(run / "export" / "model.onnx"),
                                providers=["CPUExecutionProvider"])

    def timed(fn: object) -> float:
        fn()  # type: ignore[operator]
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()  # type: ignore[operator]
            times.append(time.perf_counter() - t0)
        return float(np.median(times)) * 1000 / batch

    with torch.no_grad():
        torch_ms = timed(lambda: seg.model(torch.from_numpy(x)))
    ort_ms = timed(lambda: sess.run(None, {"image": x}))
    return {"torch_ms_per_image": round(torch_ms, 2), "onnxruntime_ms_per_image": round(ort_ms, 2)}


def predicted_masks(seg_run: Path) -> Path:
    """Every HAM10000 image's mask from the segmenter, at the photo's size (done once)."""
    out = WORK / "masks" / f"predicted_{seg_run.name}"
    done = out / ".complete"
    if not done.is_file():
        subprocess.run([*dermalab_cmd(), "segment", "predict", str(seg_run), str(HAM / "images"),
                        "--out", str(out)], check=True)
        done.write_text("")
    return out


def predicted_mask_quality(seg_run: Path, predicted: Path) -> dict[str, float]:
    """Dice / Jaccard / thresholded Jaccard of the predicted masks against the ground truth
    at the photos' own size (200x150), on the segmenter's test split."""
    import csv

    from dermalab.data.masks import read_mask
    from dermalab.segment.metrics import segmentation_metrics

    with open(seg_run / "splits.csv") as f:
        test = [r["sample_id"] for r in csv.DictReader(f) if r["split"] == "test"]
    preds = [read_mask(predicted / f"{sid}_mask.png") for sid in test]
    truths = [read_mask(HAM / "masks" / f"{sid}_segmentation.png") for sid in test]
    m = segmentation_metrics(preds, truths)
    return {k: round(float(m[k]), 4) for k in ("n", "dice", "jaccard", "thresholded_jaccard")}


def classification_rows(seg_run: Path, predicted: Path, sizes: list[int], epochs: int,
                        report: dict, write: object) -> None:
    """Train one run per (size, input, masks) row, then the second seeds; ``write()`` after
    each run."""
    rows: list[dict] = report["classification"]["rows"]
    done = {(r["size"], r["input"], r["masks"], r["seed"], r.get("epochs", epochs))
            for r in rows}

    def run(size: int, mode: str, masks: str, seed: int, n_epochs: int = epochs) -> None:
        if (size, mode, masks, seed, n_epochs) in done:
            return
        slug = {"–": "nomask", "ground truth": "gt", "predicted": "pred"}[masks]
        name = f"cls_{size}px_{mode.replace('+', '_')}_{slug}_s{seed}"
        name += f"_e{n_epochs}" if n_epochs != epochs else ""
        sets = [*ONE_MODEL, f"data.image_size={size}", f"train.epochs={n_epochs}",
                f"train.seed={seed}",
                f"data.split_file={seg_run / 'splits.csv'}", f"data.input={mode}",
                "eval.serving=false", "tracking.enabled=false"]
        if mode != "raw":
            sets.append(f"data.masks={HAM / 'masks' if masks == 'ground truth' else predicted}")
        m = train_run(WORK / "masks" / name, str(REPO / "configs" / "ham10000_default.yaml"),
                      sets, str(HAM))
        rows.append({"size": size, "input": mode, "masks": masks, "seed": seed,
                     "epochs": n_epochs,
                     **{k: round(float(m[k]), 4) for k in METRICS},
                     "val_balanced_accuracy": round(float(m["best_val_monitor"]), 4),
                     "epochs_run": m["epochs_run"], "best_epoch": m["best_epoch"],
                     "train_minutes": round(m["train_seconds_total"] / 60, 1)})
        done.add((size, mode, masks, seed, n_epochs))
        write()  # type: ignore[operator]

    for size in sizes:  # ground truth first: it is the upper bound the predicted rows chase
        run(size, "raw", "–", 42)
        for masks in ("ground truth", "predicted"):
            for mode in INPUTS[1:]:
                run(size, mode, masks, 42)
        if size == sizes[0]:  # the noise, measured where runs are cheapest
            first = [r for r in rows if r["size"] == size and r["seed"] == 42]
            best = max((r for r in first if r["input"] != "raw"),
                       key=lambda r: r["val_balanced_accuracy"])
            run(size, "raw", "–", 7)
            run(size, best["input"], best["masks"], 7)
            # raw+masked takes twice the steps per epoch: raw with twice the epochs is the
            # control that tells the masked copies from the extra training
            run(size, "raw", "–", 42, 2 * epochs)


def effects_md(rows: list[dict], epochs: int) -> list[str]:
    """Each input's difference from ``raw`` at the same size (seed 42, the grid's epochs),
    averaged over the sizes and both kinds of mask: computed from the rows, never typed."""
    base = {r["size"]: r for r in rows
            if r["input"] == "raw" and r["seed"] == 42 and r.get("epochs", epochs) == epochs}
    out = ["| input | rows | mean Δ bal. acc vs raw | mean Δ AUC vs raw |",
           "| --- | --- | --- | --- |"]
    for mode in INPUTS[1:]:
        diffs = [(r["balanced_accuracy"] - base[r["size"]]["balanced_accuracy"],
                  r["roc_auc_macro"] - base[r["size"]]["roc_auc_macro"])
                 for r in rows if r["input"] == mode and r["seed"] == 42
                 and r.get("epochs", epochs) == epochs and r["size"] in base]
        if diffs:
            d = np.mean(diffs, axis=0)
            out.append(f"| {mode} | {len(diffs)} | {d[0]:+.3f} | {d[1]:+.3f} |")
    return out if len(out) > 2 else []


def classification_md(report: dict) -> list[str]:
    """The classification table and the noise the second seeds show."""
    cls = report["classification"]
    rows = cls["rows"]
    if not rows:
        return ["Not run yet."]
    md = [f"Recipe `configs/ham10000_default.yaml` cut to {cls['epochs']} epochs (the grid "
          "has to fit on 2 CPUs, so the numbers are below the full recipe's; compare rows, "
          "not against the quality table), the segmenter's lesion-grouped split (test "
          f"n = {cls['test_n']}); predicted masks are the segmenter's at the photo's size "
          f"(their test Jaccard against the ground truth at 200x150: "
          f"{fmt(cls['predicted_mask_quality']['jaccard'])}). `raw+masked` trains on every "
          "image twice per epoch (twice the steps of the other rows: see train min) and is "
          "evaluated on raw photos.", "",
          "| px | input | masks | seed | bal. acc | acc | macro-F1 | AUC | val bal. acc | "
          "epochs (best) | train min |", "| --- | --- | --- | --- | --- | --- | --- | --- | "
          "--- | --- | --- |"]
    for r in sorted(rows, key=lambda r: (r["size"], INPUTS.index(r["input"]),
                                         r.get("epochs", cls["epochs"]), r["masks"],
                                         r["seed"])):
        label = r["input"] + (f", {r['epochs']} epochs" if r.get("epochs", cls["epochs"])
                              != cls["epochs"] else "")
        md.append(f"| {r['size']} | {label} | {r['masks']} | {r['seed']} | "
                  f"{fmt(r['balanced_accuracy'])} | {fmt(r['accuracy'])} | "
                  f"{fmt(r['macro_f1'])} | {fmt(r['roc_auc_macro'])} | "
                  f"{fmt(r['val_balanced_accuracy'])} | {r['epochs_run']} ({r['best_epoch']}) | "
                  f"{r['train_minutes']} |")
    pairs: dict[tuple, list[float]] = {}
    for r in rows:
        if r.get("epochs", cls["epochs"]) == cls["epochs"]:
            pairs.setdefault((r["size"], r["input"], r["masks"]), []).append(
                r["balanced_accuracy"])
    noise = [(k, v) for k, v in pairs.items() if len(v) > 1]
    md += ["", *effects_md(rows, cls["epochs"])]
    if noise:
        md += ["", "Run-to-run noise (same row, seeds 42 and 7; balanced accuracy): " + "; ".join(
            f"{k[0]} px {k[1]} ({k[2]}): {v[0]:.3f} vs {v[1]:.3f}, |Δ| {abs(v[0] - v[1]):.3f}"
            for k, v in noise) + "."]
    return md


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--cls-sizes", type=int, nargs="+", default=[64, 96])
    ap.add_argument("--cls-epochs", type=int, default=3)
    ap.add_argument("--set", dest="sets", nargs="*", default=[])
    args = ap.parse_args()
    import torch

    torch.set_flush_denormal(True)
    run = WORK / "masks" / f"segment_{args.size}px_{args.epochs}ep"
    sets = [f"data.masks={HAM / 'masks'}", "data.format=ham10000",
            f"segment.image_size={args.size}", f"segment.epochs={args.epochs}",
            "tracking.enabled=false", *args.sets]
    seg = train_run(run, None, sets, str(HAM), command=("segment", "train"))
    speed = inference_ms(run, args.size)
    minutes = seg["train_seconds_total"] / 60
    predicted = predicted_masks(run)
    previous = json.loads(RESULT.read_text()) if RESULT.is_file() else {}
    kept = previous.get("classification")
    kept = kept if isinstance(kept, dict) else {}
    rows = kept.get("rows", []) if kept.get("epochs") == args.cls_epochs else []
    report = {"date": time.strftime("%Y-%m-%d"), "machine": machine(),
              "segmentation": {**seg, **speed, "train_minutes": round(minutes, 1),
                               "command": f"bench/masks.py --size {args.size} "
                                          f"--epochs {args.epochs}",
                               "target": {"jaccard": 0.80, "thresholded_jaccard": 0.75,
                                          "train_minutes": 30}},
              "isic2018_winner_thresholded_jaccard": ISIC2018_WINNER_THRESHOLDED_JACCARD,
              "classification": {"recipe": "configs/ham10000_default.yaml",
                                 "epochs": args.cls_epochs, "sizes": args.cls_sizes,
                                 "test_n": seg["n"],
                                 "predicted_mask_quality": predicted_mask_quality(run, predicted),
                                 "rows": rows}}
    hit = (seg["jaccard"] >= 0.80 and seg["thresholded_jaccard"] >= 0.75 and minutes <= 30)

    def write() -> None:
        md = [f"# Lesion masks on HAM10000 ({report['date']}, {machine()['cpus']} CPUs)", "",
              "## Segmentation (lesion-grouped test split; masks at the model's input size)", "",
              "| model | px | epochs (best) | test images | Dice | Jaccard | thresholded "
              "Jaccard | train min | ms/image torch / ONNX Runtime |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
              f"| U-Net, EfficientNet-Lite0 encoder (ImageNet, offline) | {args.size} | "
              f"{seg['epochs_run']} ({seg['best_epoch']}) | {seg['n']} | {fmt(seg['dice'])} | "
              f"**{fmt(seg['jaccard'])}** | **{fmt(seg['thresholded_jaccard'])}** | "
              f"{minutes:.1f} | {speed['torch_ms_per_image']:.1f} / "
              f"{speed['onnxruntime_ms_per_image']:.1f} |",
              f"| ISIC 2018 Task 1 winner (its own test set, full resolution: an anchor) | – | "
              f"– | 1,000 | – | – | {ISIC2018_WINNER_THRESHOLDED_JACCARD} | – | – |", "",
              f"Target (mean Jaccard ≥ 0.80, thresholded Jaccard ≥ 0.75, ≤ 30 min on 2 CPUs): "
              f"{'met' if hit else 'not met'}.", "",
              "## Classification with lesion-aware input", "", *classification_md(report)]
        write_results("masks", report, md)

    write()
    classification_rows(run, predicted, args.cls_sizes, args.cls_epochs, report, write)
    print(json.dumps({k: report["segmentation"][k] for k in
                      ("dice", "jaccard", "thresholded_jaccard", "train_minutes")}))


if __name__ == "__main__":
    main()
