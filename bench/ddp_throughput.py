"""Benchmark: training throughput of 1 process vs 2 data-parallel processes (torchrun, gloo)
on this machine, same global batch, real HAM10000 at the default recipe's resolution.

On a 2-core CPU two processes are not expected to be faster (each gets one core instead of
two threads); the benchmark shows the cost of the distributed machinery, and on a GPU machine
(``--nproc 2`` per GPU count) the speed-up.

    .venv/bin/python bench/ddp_throughput.py [--batches 30] [--size 128]

Writes ``bench/results/ddp_throughput.{json,md}``.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import HAM, ONE_MODEL, REPO, WORK, machine, write_results


def run(nproc: int, global_batch: int, batches: int, size: int, out: Path) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                 "--master_addr", "127.0.0.1", "--master_port", "29611", "-m", "dermalab"]
                if nproc > 1 else [sys.executable, "-m", "dermalab"])
    sets = [f"data.image_size={size}", "train.epochs=2", "model.freeze_epochs=0",
            f"train.batch_size={global_batch // nproc}", f"train.max_batches={batches}",
            "train.patience=0", "tracking.enabled=false", "eval.report=false",
            "eval.serving=false", "eval.gallery=0", *ONE_MODEL]
    t0 = time.perf_counter()
    subprocess.run([*launcher, "train", "-c", str(REPO / "configs" / "ham10000_default.yaml"),
                    "--data", str(HAM), "--out", str(out), "--no-progress", "--set", *sets],
                   check=True, capture_output=True, cwd=REPO)
    wall = time.perf_counter() - t0
    with open(out / "history.csv") as f:
        rows = list(csv.DictReader(f))
    # Epoch 1 includes warm-up effects; epoch 2 is the steady state.
    return {"processes": nproc, "per_process_batch": global_batch // nproc,
            "global_batch": global_batch, "batches_per_process": batches,
            "images_per_s_epoch1": float(rows[0]["train_images_per_s"]),
            "images_per_s_epoch2": float(rows[1]["train_images_per_s"]),
            "wall_seconds_incl_eval": round(wall, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, default=30, help="steps (global batches) per epoch")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--global-batch", type=int, default=32)
    args = ap.parse_args()
    work = WORK / "ddp"
    rows = [run(n, args.global_batch, args.batches,
                args.size, work / f"p{n}") for n in (1, 2)]
    ratio = rows[1]["images_per_s_epoch2"] / rows[0]["images_per_s_epoch2"]
    report = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "size": args.size,
              "rows": rows, "ratio_2_over_1": round(ratio, 3)}
    md = [f"# Data-parallel training throughput ({report['date']}, "
          f"{report['machine']['cpus']} CPUs, {args.size} px, EfficientNet-Lite0, global batch "
          f"{args.global_batch})", "",
          "| processes | batch per process | img/s epoch 1 | img/s epoch 2 | wall s (incl. eval) |",
          "| --- | --- | --- | --- | --- |"]
    md += [f"| {r['processes']} | {r['per_process_batch']} | {r['images_per_s_epoch1']:.1f} | "
           f"{r['images_per_s_epoch2']:.1f} | {r['wall_seconds_incl_eval']} |" for r in rows]
    md += ["", f"2 processes / 1 process (epoch 2): **{ratio:.2f}x**."]
    write_results("ddp_throughput", report, md)


if __name__ == "__main__":
    main()
