"""Benchmark: the web service under load on 127.0.0.1, and its not-skin detection rates.

Starts ``dermalab serve RUN_DIR`` on a free loopback port, then sends ``--requests`` photo
uploads from ``--clients`` concurrent clients (real HAM10000 test images of the run's split),
and reports p50/p95/max latency and the status codes. Also measures how often the service calls
a photo "not skin": the non-skin photos bundled with scikit-image (should be flagged) and the
run's HAM10000 test images (should not be). Writes ``bench/results/serve_load.json`` and ``.md``.

    .venv/bin/python bench/serve_load.py RUN_DIR [--requests 300] [--clients 4]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.webserver import dermalab_server  # noqa: E402

NON_SKIN = ["astronaut", "coffee", "rocket", "chelsea", "camera", "cell", "coins", "horse",
            "hubble_deep_field", "immunohistochemistry", "moon", "page", "text", "retina",
            "clock", "brick", "grass", "gravel", "colorwheel", "logo"]


def sign_up(url: str, k: int) -> str:
    """A new account; returns its bearer token (Argon2 runs here, once, not per request)."""
    body = json.dumps({"email": f"bench{k}@example.org", "password": "bench password"})
    req = urllib.request.Request(url + "/v1/auth/signup", data=body.encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return str(json.loads(r.read())["token"])


def post(url: str, name: str, data: bytes, token: str) -> tuple[int, float, dict]:
    boundary = "dermalabbench"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\""
            f"\r\nContent-Type: application/octet-stream\r\n\r\n").encode() + data + \
        f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(url + "/v1/analyses", data=body, method="POST", headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}",
        "Authorization": f"Bearer {token}"})
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            payload = json.loads(r.read())
            code = r.status
    except urllib.error.HTTPError as e:
        code, payload = e.code, {}
    return code, time.perf_counter() - t0, payload


def skimage_photos() -> dict[str, bytes]:
    from PIL import Image
    from skimage import data as skdata

    out = {}
    for name in NON_SKIN:
        arr = getattr(skdata, name)()
        if arr.ndim == 3 and arr.shape[2] == 4:
            arr = arr[:, :, :3]
        img = Image.fromarray(arr if arr.dtype == np.uint8 else
                              (arr / max(arr.max(), 1) * 255).astype(np.uint8)).convert("RGB")
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        out[name] = buf.getvalue()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--data", default=str(REPO.parent / "shared/data/ham10000_200x150"))
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = ap.parse_args()
    run = Path(args.run_dir)
    with open(run / "splits.csv") as f:
        test_ids = [r["sample_id"] for r in csv.DictReader(f) if r["split"] == "test"]
    images = {i: (Path(args.data) / "images" / f"{i}.jpg").read_bytes() for i in test_ids}
    # Signed-in clients, each with its own account; the upload limit is raised so the
    # benchmark measures the service (the limiter still runs on every request).
    limits = ("--rate-upload", "100000/minute", "--rate-signin", "1000/minute")
    with tempfile.TemporaryDirectory() as tmp, \
            dermalab_server(run, Path(tmp), extra_args=limits) as url:
        backend = json.loads(urllib.request.urlopen(url + "/healthz").read())["backend"]
        tokens = [sign_up(url, k) for k in range(args.clients)]
        ids = list(images)
        for i in ids[:8]:  # warm-up
            post(url, i, images[i], tokens[0])
        jobs = [(ids[k % len(ids)], tokens[k % len(tokens)]) for k in range(args.requests)]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            results = list(pool.map(lambda j: post(url, f"{j[0]}.jpg", images[j[0]], j[1]),
                                    jobs))
        wall = time.perf_counter() - t0
        lat = np.array([r[1] for r in results]) * 1000
        codes = Counter(r[0] for r in results)
        # Not-skin detection rates (sequential; the answers, not the speed, matter here).
        ham_flags = [post(url, f"{i}.jpg", images[i], tokens[0])[2].get("verdict") for i in ids]
        photos = skimage_photos()
        non_skin = {n: post(url, f"{n}.jpg", b, tokens[0])[2].get("verdict")
                    for n, b in photos.items()}
    metrics = json.loads((run / "metrics.json").read_text())
    info = json.loads((run / "export" / "model.json").read_text()) if (
        run / "export" / "model.json").is_file() else {}
    model = {"backbone": info.get("backbone") or metrics.get("backbone"),
             "image_size": info.get("image_size") or metrics.get("image_size"),
             "test_balanced_accuracy": (round(float(metrics["balanced_accuracy"]), 3)
                                        if metrics.get("balanced_accuracy") is not None
                                        else None),
             "test_images": sum(metrics.get("split", {}).get("counts", {}).get("test", {})
                                .values())}
    report = {
        "run": str(run.resolve()), "model": model, "backend": backend,
        "clients": args.clients,
        "requests": args.requests, "wall_seconds": round(wall, 2),
        "throughput_rps": round(args.requests / wall, 2),
        "latency_ms": {"p50": round(float(np.percentile(lat, 50)), 1),
                       "p95": round(float(np.percentile(lat, 95)), 1),
                       "max": round(float(lat.max()), 1)},
        "status_codes": {str(k): v for k, v in codes.items()},
        "errors_5xx": sum(v for k, v in codes.items() if k >= 500),
        "ood": {
            "non_skin_photos": len(non_skin),
            "non_skin_flagged": sum(v == "not_skin" for v in non_skin.values()),
            "non_skin_verdicts": non_skin,
            "ham_test_images": len(ham_flags),
            "ham_wrongly_flagged": sum(v == "not_skin" for v in ham_flags),
            "ham_uncertain": sum(v == "uncertain" for v in ham_flags),
        },
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "date": time.strftime("%Y-%m-%d"),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve_load.json").write_text(json.dumps(report, indent=2))
    o = report["ood"]
    md = [f"# Web service load ({report['date']}, {os.cpu_count()} CPUs, backend {backend})", "",
          f"{args.requests} uploads of real HAM10000 test photos from {args.clients} concurrent "
          "clients on 127.0.0.1; each response includes calibrated probabilities, the OOD check "
          "and a Grad-CAM heat-map; each client is a signed-in account (bearer token).", "",
          f"Model: {model['backbone']} at {model['image_size']} px, test balanced accuracy "
          f"{model['test_balanced_accuracy']} on {model['test_images']} images (the not-skin "
          "rates below depend on the model; the latency on its architecture and size).", "",
          "| p50 ms | p95 ms | max ms | req/s | 5xx | status codes |",
          "| --- | --- | --- | --- | --- | --- |",
          f"| {report['latency_ms']['p50']} | {report['latency_ms']['p95']} | "
          f"{report['latency_ms']['max']} | {report['throughput_rps']} | "
          f"{report['errors_5xx']} | {report['status_codes']} |", "",
          f"Not-skin detection: {o['non_skin_flagged']}/{o['non_skin_photos']} scikit-image "
          f"non-skin photos flagged; {o['ham_wrongly_flagged']}/{o['ham_test_images']} HAM10000 "
          f"test photos wrongly flagged; {o['ham_uncertain']} HAM10000 test photos 'uncertain'."]
    (out / "serve_load.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
