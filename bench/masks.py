"""Benchmark: lesion masks. Writes ``bench/results/masks.{md,json}``.

Segmentation: ``dermalab segment train`` (U-Net on the offline ImageNet EfficientNet-Lite0) on
all of HAM10000 with its lesion masks, on the lesion-grouped split the data layer makes (80/10/10,
seed 42, no lesion in two parts), then Dice, Jaccard and the ISIC 2018 Task 1 thresholded
Jaccard on the test images, training minutes, and ms/image in PyTorch and ONNX Runtime. The
masks and the metrics are at the model's input size (the 200x150 images squashed to S x S), not
at the originals' 600x450; the ISIC 2018 winner's 0.802 thresholded Jaccard is on another test
set (the challenge's own) and at full resolution, so it is an anchor, not a like-for-like row.

Classification with lesion-aware input (raw / masked / crop / raw+masked / mask_channel) is
listed as not run until ``data.input`` exists.

    .venv/bin/python bench/masks.py [--size 96] [--epochs 8] [--set segment.lr=...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import numpy as np
from common import HAM, WORK, dermalab_cmd, fmt, machine, train_run, write_results

ISIC2018_WINNER_THRESHOLDED_JACCARD = 0.802


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--epochs", type=int, default=8)
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
    report = {"date": time.strftime("%Y-%m-%d"), "machine": machine(),
              "segmentation": {**seg, **speed, "train_minutes": round(minutes, 1),
                               "command": f"bench/masks.py --size {args.size} "
                                          f"--epochs {args.epochs}",
                               "target": {"jaccard": 0.80, "thresholded_jaccard": 0.75,
                                          "train_minutes": 30}},
              "isic2018_winner_thresholded_jaccard": ISIC2018_WINNER_THRESHOLDED_JACCARD,
              "classification": "not run: data.input (masked / crop / raw+masked / "
                                "mask_channel) is not built yet"}
    hit = (seg["jaccard"] >= 0.80 and seg["thresholded_jaccard"] >= 0.75 and minutes <= 30)
    md = [f"# Lesion masks on HAM10000 ({report['date']}, {machine()['cpus']} CPUs)", "",
          "## Segmentation (lesion-grouped test split; masks at the model's input size)", "",
          "| model | px | epochs (best) | test images | Dice | Jaccard | thresholded Jaccard "
          "| train min | ms/image torch / ONNX Runtime |",
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
          f"| U-Net, EfficientNet-Lite0 encoder (ImageNet, offline) | {args.size} | "
          f"{seg['epochs_run']} ({seg['best_epoch']}) | {seg['n']} | {fmt(seg['dice'])} | "
          f"**{fmt(seg['jaccard'])}** | **{fmt(seg['thresholded_jaccard'])}** | {minutes:.1f} | "
          f"{speed['torch_ms_per_image']:.1f} / {speed['onnxruntime_ms_per_image']:.1f} |",
          f"| ISIC 2018 Task 1 winner (its own test set, full resolution: an anchor) | – | – | "
          f"1,000 | – | – | {ISIC2018_WINNER_THRESHOLDED_JACCARD} | – | – |", "",
          f"Target (mean Jaccard ≥ 0.80, thresholded Jaccard ≥ 0.75, ≤ 30 min on 2 CPUs): "
          f"{'met' if hit else 'not met'}.", "",
          "## Classification with lesion-aware input", "",
          "Not run yet: `data.input` (masked / crop / raw+masked / mask_channel) is not built."]
    write_results("masks", report, md)
    print(json.dumps({k: report["segmentation"][k] for k in
                      ("dice", "jaccard", "thresholded_jaccard", "train_minutes")}))


if __name__ == "__main__":
    main()
