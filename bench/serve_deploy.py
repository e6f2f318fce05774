"""Benchmark: the deployment profile under load, through the proxy (issue 52).

Starts ``tests/localstack.py``'s profile (nginx in front of N dermalab workers, PostgreSQL,
SeaweedFS S3 and Redis on 127.0.0.1) with 1 and then 2 workers, and at each of
``--clients`` (default 4, 16, 64) concurrent signed-in clients sends ``--requests`` uploads of
real HAM10000 test photos of the run's split through the proxy. Reports p50/p95/p99 latency,
throughput and errors per setting, and the 2-worker / 1-worker throughput ratio measured in
the same run. Results: ``bench/results/serve_deploy.{json,md}``.

    .venv/bin/python bench/serve_deploy.py RUN_DIR [--requests 200] [--clients 4 16 64]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, machine, write_results
from serve_load import post, sign_up
from tests.localstack import deployment, missing


def load(url: str, images: dict[str, bytes], clients: int, requests: int) -> dict:
    tokens = [sign_up(url, 1000 * clients + k) for k in range(clients)]
    ids = list(images)
    for i in ids[:4]:  # warm-up
        post(url, f"{i}.jpg", images[i], tokens[0])
    jobs = [(ids[k % len(ids)], tokens[k % len(tokens)]) for k in range(requests)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda j: post(url, f"{j[0]}.jpg", images[j[0]], j[1]), jobs))
    wall = time.perf_counter() - t0
    lat = np.array([r[1] for r in results]) * 1000
    codes = Counter(r[0] for r in results)
    return {"clients": clients, "requests": requests, "wall_seconds": round(wall, 2),
            "throughput_rps": round(requests / wall, 2),
            "latency_ms": {p: round(float(np.percentile(lat, int(p[1:]))), 1)
                           for p in ("p50", "p95", "p99")},
            "status_codes": {str(k): v for k, v in codes.items()},
            "errors": sum(v for k, v in codes.items() if k != 201)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--clients", type=int, nargs="+", default=[4, 16, 64])
    ap.add_argument("--data", default=str(REPO.parent / "shared/data/ham10000_200x150"))
    args = ap.parse_args()
    if missing():
        raise SystemExit("the deployment profile needs " + ", ".join(missing()))
    run = Path(args.run_dir).resolve()
    with open(run / "splits.csv") as f:
        test_ids = [r["sample_id"] for r in csv.DictReader(f) if r["split"] == "test"]
    images = {i: (Path(args.data) / "images" / f"{i}.jpg").read_bytes() for i in test_ids}
    limits = ("--rate-upload", "100000/minute", "--rate-signin", "100000/minute")
    rows = []
    for workers in (1, 2):
        with tempfile.TemporaryDirectory() as tmp, \
                deployment([str(run)], Path(tmp), workers=workers, extra_args=limits) as dep:
            backend = json.loads(urllib.request.urlopen(dep.url + "/healthz").read())["backend"]
            for clients in args.clients:
                rows.append({"workers": workers, **load(dep.url, images, clients,
                                                         args.requests)})
    ratio = {str(c): round(next(r["throughput_rps"] for r in rows
                                if r["workers"] == 2 and r["clients"] == c)
                           / next(r["throughput_rps"] for r in rows
                                  if r["workers"] == 1 and r["clients"] == c), 2)
             for c in args.clients}
    report = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "run": run.name,
              "backend": backend,
              "rows": rows, "throughput_ratio_2_vs_1_workers": ratio}
    md = [f"# The deployment profile under load ({report['date']}, "
          f"{report['machine']['cpus']} CPUs, backend {backend})", "",
          "nginx -> dermalab workers, PostgreSQL, SeaweedFS S3, Redis on 127.0.0.1; uploads of "
          "real HAM10000 test photos through the proxy, each client a signed-in account. "
          "Target (issue 52): 0 errors; p95 <= 250 ms at 4 clients.", "",
          "| workers | clients | p50 ms | p95 ms | p99 ms | req/s | errors |",
          "| --- | --- | --- | --- | --- | --- | --- |"]
    md += [f"| {r['workers']} | {r['clients']} | {r['latency_ms']['p50']} | "
           f"{r['latency_ms']['p95']} | {r['latency_ms']['p99']} | {r['throughput_rps']} | "
           f"{r['errors']} |" for r in rows]
    md += ["", "Throughput with 2 workers / with 1, same run: "
           + ", ".join(f"{c} clients {v}x" for c, v in ratio.items()) + "."]
    write_results("serve_deploy", report, md)


if __name__ == "__main__":
    main()
