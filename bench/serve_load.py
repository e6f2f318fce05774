"""Benchmark: the web service under load on 127.0.0.1, and its not-skin detection rates.

Starts ``dermalab serve RUN_DIR`` on a free loopback port, then sends ``--requests`` photo
uploads from ``--clients`` concurrent clients (real HAM10000 test images of the run's split),
and reports p50/p95/max latency and the status codes. Also measures how often the service calls
a photo "not skin": the non-skin photos bundled with scikit-image (should be flagged) and the
run's HAM10000 test images (should not be). Writes ``bench/results/serve_load.json`` and ``.md``.

With ``--clinical RUN --router DIR`` it serves the app's two models behind the image-type
router instead, and the uploads mix the dermoscopic run's HAM10000 test photos, the clinical
run's test photos and their phone close-up stand-ins (centre crops keeping half of each side,
as ``bench/closeups.py``), a third each: latency is also reported for the answers that asked
the other model for a second opinion (the router unsure) and those that did not. Writes
``serve_load_app.{json,md}``.

    .venv/bin/python bench/serve_load.py RUN_DIR [--requests 300] [--clients 4]
    .venv/bin/python bench/serve_load.py RUN_DIR --clinical RUN --router DIR
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
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
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

from common import machine, repo_relative, write_results  # noqa: E402
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
    ap.add_argument("--clinical", help="a clinical-photo run served beside RUN_DIR")
    ap.add_argument("--router", help="the image-type router for --clinical")
    args = ap.parse_args()
    if bool(args.clinical) != bool(args.router):
        raise SystemExit("--clinical and --router go together")
    if args.clinical:
        app_load(args)
        return
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
        "run": repo_relative(str(run)), "model": model, "backend": backend,
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
        "machine": machine(), "date": time.strftime("%Y-%m-%d"),
    }
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
    write_results("serve_load", report, md, Path(args.out))


def clinical_photos(run_dir: str, n: int) -> dict[str, bytes]:
    """``n`` of a clinical run's test photos as uploaded (JPEG), and as many close-up
    stand-ins (the centre crop keeping half of each side, re-encoded)."""
    from PIL import Image

    from dermalab.core.runs import load_run
    from dermalab.data.prepare import prepare_data
    from dermalab.deploy.router_fit import closeup_views

    run = load_run(Path(run_dir), command="bench serve_load")
    data = prepare_data(run.config.data, run.info.image_size, split_path=run.paths.splits,
                        progress=False, write=False)
    samples = [s for s in data.samples("test") if s.path][:n]
    out: dict[str, bytes] = {}
    for k, sample in enumerate(samples):
        img = Image.open(str(sample.path)).convert("RGB")
        crop = Image.fromarray(closeup_views(np.asarray(img), (0.5,))[0])
        for kind, pic in (("clinical", img), ("closeup", crop)):
            buf = io.BytesIO()
            pic.save(buf, "JPEG", quality=92)
            out[f"{kind}-{k}"] = buf.getvalue()
    return out


def percentiles(lat_s: list[float]) -> dict[str, float | int]:
    """p50/p95/max in ms of latencies in seconds, and how many."""
    lat = np.array(lat_s) * 1000
    if not len(lat):
        return {"n": 0}
    return {"n": len(lat), "p50": round(float(np.percentile(lat, 50)), 1),
            "p95": round(float(np.percentile(lat, 95)), 1), "max": round(float(lat.max()), 1)}


def app_load(args: argparse.Namespace) -> None:
    """The two-model app under load (see the module docstring)."""
    run = Path(args.run_dir)
    with open(run / "splits.csv") as f:
        test_ids = [r["sample_id"] for r in csv.DictReader(f) if r["split"] == "test"]
    third = args.requests // 3
    photos = {f"dermoscopic-{k}": (Path(args.data) / "images" / f"{i}.jpg").read_bytes()
              for k, i in enumerate(test_ids[:third])}
    photos.update(clinical_photos(args.clinical, third))
    limits = ("--rate-upload", "100000/minute", "--rate-signin", "1000/minute",
              "--router", args.router)
    names = sorted(photos, key=lambda n: (int(n.rsplit("-", 1)[1]), n))  # interleaved kinds
    with tempfile.TemporaryDirectory() as tmp, \
            dermalab_server(run, Path(tmp), extra_args=limits,
                            more_runs=(args.clinical,)) as url:
        backend = json.loads(urllib.request.urlopen(url + "/healthz").read())["backend"]
        tokens = [sign_up(url, k) for k in range(args.clients)]
        for n in names[:8]:  # warm-up
            post(url, f"{n}.jpg", photos[n], tokens[0])
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            results = list(pool.map(
                lambda k: post(url, f"{names[k]}.jpg", photos[names[k]],
                               tokens[k % len(tokens)]), range(len(names))))
        wall = time.perf_counter() - t0
    codes = Counter(r[0] for r in results)
    groups: dict[str, list[float]] = {"all": []}
    for name, (code, seconds, payload) in zip(names, results, strict=True):
        if code != 201:
            continue
        routing = payload.get("routing") or {}
        answered = (payload.get("model") or {}).get("image_type", "none")
        keys = ["all", f"photo {name.rsplit('-', 1)[0]}", f"answered by {answered}",
                "with a second opinion" if routing.get("second_opinion")
                else "without a second opinion"]
        for key in keys:
            groups.setdefault(key, []).append(seconds)
    report = {"run": repo_relative(str(run)), "clinical": repo_relative(args.clinical),
              "router": repo_relative(args.router), "backend": backend,
              "clients": args.clients, "requests": len(names), "wall_seconds": round(wall, 2),
              "throughput_rps": round(len(names) / wall, 2),
              "latency_ms": {k: percentiles(v) for k, v in groups.items()},
              "status_codes": {str(k): v for k, v in codes.items()},
              "errors": sum(v for k, v in codes.items() if k != 201),
              "machine": machine(), "date": time.strftime("%Y-%m-%d")}
    md = [f"# The app's two models under load ({report['date']}, {os.cpu_count()} CPUs, "
          f"backend {backend})", "",
          f"{len(names)} uploads from {args.clients} concurrent signed-in clients on 127.0.0.1 "
          f"to `dermalab serve` with the dermoscopic run `{report['run']}`, the clinical run "
          f"`{report['clinical']}` and the router `{report['router']}`: a third each "
          "HAM10000 test photos, clinical test photos and their close-up stand-ins (centre "
          "crop, half of each side). Each answer carries calibrated probabilities, the OOD "
          "check and a Grad-CAM heat-map; a second opinion (the router unsure) adds the other "
          "model's assessment. Target (issues 49, 52): p95 <= 250 ms at 4 clients.", "",
          f"Throughput {report['throughput_rps']} requests/s; status codes "
          f"{report['status_codes']}.", "",
          "| answers | n | p50 ms | p95 ms | max ms |", "| --- | --- | --- | --- | --- |"]
    md += [f"| {k} | {v['n']} | {v.get('p50', '–')} | {v.get('p95', '–')} | "
           f"{v.get('max', '–')} |" for k, v in report["latency_ms"].items()]
    write_results("serve_load_app", report, md, Path(args.out))


if __name__ == "__main__":
    main()
