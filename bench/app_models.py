"""Benchmark: the photo app with two models (dermoscopy + clinical) behind one image-type router.

Measures, and writes to ``bench/results/app_models.{json,md}``:

1. the clinical model's test metrics (its own held-out split), per class, its main confusions,
   and how much of its Grad-CAM falls on the DermNet watermark (bottom left of every photo);
2. the router's confusion matrix on images no detector saw in fitting: the dermoscopy run's
   HAM10000 test split, the clinical run's DermNet test split and the ``test`` set of
   :mod:`dermalab.data.negatives` (disjoint sources from the ``fit`` set);
3. non-skin photos flagged and real skin photos wrongly flagged, per image type, for the
   router alone (the service's default) and for the router or the answering model's own
   detectors (``model_detectors``);
4. end-to-end latency of ``dermalab serve`` with both models at ``--clients`` concurrent
   signed-in clients (a mix of clinical and dermoscopic test photos), and the server's peak RSS.

    .venv/bin/python bench/app_models.py [--dermoscopy RUN] [--clinical RUN] [--router DIR]
        [--clinical-seeds RUN ...]

``--clinical-seeds`` adds the same recipe's runs with other seeds (``--set train.seed=N``) to a
per-seed table with mean +- sd; only ``--clinical`` is served and examined.

Runs and the router are made when missing (bench/work/): the clinical recipe
(configs/dermnet_clinical.yaml) and the HAM10000 default recipe cut to ``--derm-epochs`` epochs
of 60 batches
(the router, the latency and the memory do not depend on that model's accuracy; its own
quality is bench/quality.py's subject).
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
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import (
    ONE_MODEL,
    REPO,
    SHARED,
    WORK,
    fmt,
    machine,
    mean_sd,
    pm,
    train_run,
    write_results,
)
from bench.serve_load import post, sign_up
from tests.webserver import spawn_server, stop, wait_healthy

DERMNET = SHARED / "dermnetnz_subset"
HAM_IMAGES = SHARED / "ham10000_200x150" / "images"
# The DermNet logo's box as a share of the photo (measured on the 640x480 photos: x 55-175,
# y 325-440 px): Grad-CAM mass inside it, against its share of the area.
WATERMARK = (0.085, 0.675, 0.275, 0.92)  # x0, y0, x1, y1


def split_ids(run: Path, split: str) -> list[str]:
    with open(run / "splits.csv") as f:
        return [r["sample_id"] for r in csv.DictReader(f) if r["split"] == split]


def clinical_paths(run: Path, ids: list[str]) -> list[Path]:
    """Folder-dataset sample ids are paths relative to the dataset root."""
    return [DERMNET / i for i in ids]


def ensure_runs(args: argparse.Namespace) -> tuple[Path, Path, Path]:
    clinical = Path(args.clinical)
    train_run(clinical, str(REPO / "configs" / "dermnet_clinical.yaml"), [])
    derm = Path(args.dermoscopy)
    train_run(derm, str(REPO / "configs" / "ham10000_default.yaml"),
              [*ONE_MODEL, f"train.epochs={args.derm_epochs}", "train.max_batches=60",
               "eval.report=false"])
    for run in (clinical, derm):  # the service runs ONNX Runtime when an export exists
        if not (run / "export" / "model.onnx").is_file():
            from dermalab.deploy.export import export_onnx

            export_onnx(run)
    router = Path(args.router)
    if not (router / "router.json").is_file():
        from dermalab.deploy.router_fit import fit_router_for_runs

        fit_router_for_runs([derm, clinical], router)
    return derm, clinical, router


def clinical_quality(run: Path) -> dict[str, Any]:
    """Test metrics, per class, the largest confusions."""
    m = json.loads((run / "metrics.json").read_text())
    per = m.get("per_class", {})
    cm = np.asarray(m.get("confusion_matrix", []))
    classes = list(m.get("classes") or per)
    confusions = []
    if cm.size:
        for i, a in enumerate(classes):
            for j, b in enumerate(classes):
                if i != j and cm[i, j]:
                    confusions.append({"true": a, "predicted": b, "images": int(cm[i, j]),
                                       "share_of_true": round(float(cm[i, j] / cm[i].sum()), 3)})
    confusions.sort(key=lambda c: -c["images"])
    return {"balanced_accuracy": m.get("balanced_accuracy"), "roc_auc_macro":
            m.get("roc_auc_macro"), "macro_f1": m.get("macro_f1"), "accuracy": m.get("accuracy"),
            "test_images": sum(m.get("split", {}).get("counts", {}).get("test", {}).values()),
            "per_class": per, "confusion_matrix": cm.tolist(), "classes": classes,
            "top_confusions": confusions[:8],
            "train_minutes": round(m.get("train_seconds_total", 0) / 60, 1),
            "epochs_run": m.get("epochs_run"), "best_epoch": m.get("best_epoch"),
            # the fastest fine-tuning epoch: the speed with the CPUs to itself (the wall time
            # above includes any other work that shared them)
            "fastest_epoch_seconds": _fastest_epoch(run),
            "malignant": m.get("malignant"),
            "tta_balanced_accuracy": (m.get("tta") or {}).get("balanced_accuracy")}


#: The per-seed table's quality columns.
SEED_COLUMNS = ("balanced_accuracy", "roc_auc_macro", "macro_f1", "tta_balanced_accuracy")


def seed_table(runs: list[Path]) -> dict[str, Any]:
    """Per-seed test numbers of the clinical recipe and their mean +- sd (ddof 1)."""
    import yaml

    rows = []
    for run in runs:
        m = json.loads((run / "metrics.json").read_text())
        seed = yaml.safe_load((run / "config.yaml").read_text())["train"]["seed"]
        rows.append({"run": str(run), "seed": seed,
                     "balanced_accuracy": m["balanced_accuracy"],
                     "roc_auc_macro": m["roc_auc_macro"], "macro_f1": m["macro_f1"],
                     "tta_balanced_accuracy": (m.get("tta") or {}).get("balanced_accuracy"),
                     "best_epoch": m["best_epoch"], "epochs_run": m["epochs_run"],
                     "train_minutes": round(m["train_seconds_total"] / 60, 1)})
    summary = {}
    for k in (*SEED_COLUMNS, "train_minutes"):
        vals = [r[k] for r in rows if r[k] is not None]
        if vals:
            mean, sd = mean_sd(vals)
            summary[k] = {"mean": mean, "sd": sd}
    return {"rows": rows, "summary": summary}


def _fastest_epoch(run: Path) -> float | None:
    with open(run / "history.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("frozen_body") != "True"]
    return min((float(r["epoch_seconds"]) for r in rows), default=None)


def watermark_attention(run: Path, limit: int = 200) -> dict[str, Any]:
    """Share of Grad-CAM mass (for the predicted class) inside the watermark box, per test
    image, against the box's share of the image."""
    from dermalab.core.runs import load_run
    from dermalab.data.prepare import prepare_data
    from dermalab.evaluate.explain import cam_maps

    lr = load_run(run)
    data = prepare_data(lr.config.data, lr.info.image_size, split_path=lr.paths.splits,
                        progress=False, write=False)
    ids = split_ids(run, "test")[:limit]
    s = lr.info.image_size
    x0, y0, x1, y1 = (round(v * s) for v in WATERMARK)
    shares, peaks = [], 0
    for k in range(0, len(ids), 16):
        imgs = np.stack([data.store.get(i) for i in ids[k:k + 16]])
        maps, _ = cam_maps(lr.model.eval(), lr.info.backbone, imgs, lr.info.mean, lr.info.std)
        for m in maps:
            total = float(m.sum()) or 1.0
            shares.append(float(m[y0:y1, x0:x1].sum()) / total)
            py, px = np.unravel_index(int(m.argmax()), m.shape)
            peaks += int(y0 <= py < y1 and x0 <= px < x1)
    area = (x1 - x0) * (y1 - y0) / (s * s)
    return {"images": len(shares), "box_area_share": round(area, 3),
            "cam_mass_share_mean": round(float(np.mean(shares)), 3),
            "cam_mass_share_p90": round(float(np.quantile(shares, 0.9)), 3),
            "images_peaking_in_box": peaks,
            "ratio_to_area": round(float(np.mean(shares)) / area, 2)}


def detection(derm: Path, clinical: Path, router: Path) -> dict[str, Any]:
    """Route and assess every held-out image in process (the service's own code path)."""
    from dermalab.data.negatives import negative_images
    from dermalab.serve.service import build_services
    from dermalab.serve.settings import ServeSettings
    from dermalab.serve.uploads import decode_upload

    tmp = Path(tempfile.mkdtemp())
    svc = build_services(ServeSettings(run_dir=str(derm), more_runs=(str(clinical),),
                                       router=str(router), open=True,
                                       database_url=f"sqlite:///{tmp / 'h.db'}",
                                       image_store=str(tmp / "u"))).analysis
    import io

    from PIL import Image

    def jpeg(a: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, "JPEG", quality=92)
        return buf.getvalue()

    sets: dict[str, list[tuple[str, bytes]]] = {
        "dermoscopic": [(i, (HAM_IMAGES / f"{i}.jpg").read_bytes())
                        for i in split_ids(derm, "test")],
        "clinical": [(i, p.read_bytes()) for i, p in zip(
            split_ids(clinical, "test"), clinical_paths(clinical, split_ids(clinical, "test")),
            strict=True)],
        "not_skin": [(n.name, jpeg(n.image)) for n in negative_images("test")]}
    types = ["dermoscopic", "clinical", "not_skin"]
    confusion = np.zeros((3, 3), int)
    flags: dict[str, dict[str, int]] = {}
    missed: list[str] = []
    by_kind: dict[str, list[int]] = {}
    for true, items in sets.items():
        f_router = f_both = 0
        for name, data in items:
            img = decode_upload(data, name, svc.settings)
            model, routing = svc.choose(img)
            a = model.assess(img)
            routed = routing["image_type"]
            confusion[types.index(true), types.index(routed)] += 1
            f_router += routed == "not_skin"
            f_both += routed == "not_skin" or a.out_of_distribution
            if true == "not_skin":
                kind = name.split("#")[0]
                by_kind.setdefault(kind, [0, 0])
                by_kind[kind][0] += 1
                by_kind[kind][1] += routed == "not_skin"
                if routed != "not_skin":
                    missed.append(f"{name} -> {routed}")
        flags[true] = {"images": len(items), "flagged_router": f_router,
                       "flagged_router_or_model": f_both}
    return {"types": types, "confusion": confusion.tolist(), "flags": flags,
            "non_skin_by_source": {k: {"images": v[0], "flagged": v[1]}
                                   for k, v in sorted(by_kind.items())},
            "non_skin_missed": missed}


def phone_decode(repeats: int = 5) -> dict[str, Any]:
    """ms to decode a 12 MP phone JPEG for analysis (draft mode) against a full decode, and a
    12 MP HEIC (the photo: a DermNet image scaled up to 4000x3000)."""
    import io

    from PIL import Image

    from dermalab.data.images import open_rgb
    from dermalab.serve.settings import ServeSettings
    from dermalab.serve.uploads import decode_upload

    photo = Image.open(next((DERMNET / "Psoriasis").glob("*.jpg"))).convert("RGB")
    big = photo.resize((4000, 3000), Image.Resampling.BICUBIC)
    files = {}
    for kind, kw in (("JPEG", {"quality": 92}), ("HEIF", {"quality": 85})):
        buf = io.BytesIO()
        big.save(buf, kind, **kw)
        files[kind] = buf.getvalue()
    settings = ServeSettings(run_dir="unused", max_upload_bytes=64 * 1024 * 1024)

    def ms(fn: Any) -> float:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000)
        return round(float(np.median(times)), 1)

    return {"jpeg_12mp_full_decode_ms": ms(lambda: open_rgb(files["JPEG"])),
            "jpeg_12mp_service_decode_ms": ms(lambda: decode_upload(files["JPEG"], "a.jpg",
                                                                    settings)),
            "heic_12mp_service_decode_ms": ms(lambda: decode_upload(files["HEIF"], "a.heic",
                                                                    settings)),
            "jpeg_bytes": len(files["JPEG"]), "heic_bytes": len(files["HEIF"])}


def load(derm: Path, clinical: Path, router: Path, requests: int, clients: int
         ) -> dict[str, Any]:
    """p50/p95 latency and peak RSS of the real server with both models."""
    photos = [(f"{i}.jpg", (HAM_IMAGES / f"{i}.jpg").read_bytes())
              for i in split_ids(derm, "test")[:100]]
    photos += [(p.name, p.read_bytes())
               for p in clinical_paths(clinical, split_ids(clinical, "test")[:100])]
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models.yaml"
        models.write_text(f"models:\n  - run: {derm.resolve()}\n  - run: {clinical.resolve()}\n"
                          f"router: {router.resolve()}\n")
        log = Path(tmp) / "server.log"
        proc, url = spawn_server(models, log, (
            "--db", f"sqlite:///{Path(tmp) / 'h.db'}", "--images", str(Path(tmp) / "up"),
            "--rate-upload", "100000/minute", "--rate-signin", "1000/minute"))
        try:
            wait_healthy(proc, url, log)
            tokens = [sign_up(url, k) for k in range(clients)]
            for name, data in photos[:6] + photos[-6:]:  # warm-up
                post(url, name, data, tokens[0])
            jobs = [(photos[(k * 7) % len(photos)], tokens[k % clients]) for k in range(requests)]
            t0 = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                res = list(pool.map(lambda j: post(url, j[0][0], j[0][1], j[1]), jobs))
            wall = time.perf_counter() - t0
            status = Path(f"/proc/{proc.pid}/status").read_text()
            rss = {k: int(line.split()[1]) // 1024 for line in status.splitlines()
                   for k in ("VmHWM", "VmRSS") if line.startswith(k + ":")}
            health = json.loads(urllib.request.urlopen(url + "/healthz").read())
        finally:
            stop(proc)
    lat = np.array([r[1] for r in res]) * 1000
    answered = Counter((r[2].get("model") or {}).get("image_type") for r in res)
    return {"requests": requests, "clients": clients, "backend": health["backend"],
            "latency_ms": {"p50": round(float(np.percentile(lat, 50)), 1),
                           "p95": round(float(np.percentile(lat, 95)), 1),
                           "max": round(float(lat.max()), 1)},
            "throughput_rps": round(requests / wall, 2),
            "status_codes": dict(Counter(str(r[0]) for r in res)),
            "answered_by": {str(k): v for k, v in answered.items()},
            "peak_rss_mb": rss.get("VmHWM"), "rss_after_mb": rss.get("VmRSS")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dermoscopy", default=str(WORK / "app_dermoscopy"))
    ap.add_argument("--clinical", default=str(WORK / "clinical_run"))
    ap.add_argument("--router", default=str(WORK / "app_router"))
    ap.add_argument("--clinical-seeds", nargs="*", default=[],
                    help="finished runs of the clinical recipe with other seeds")
    ap.add_argument("--derm-epochs", type=int, default=2)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--clients", type=int, default=4)
    args = ap.parse_args()
    derm, clinical, router = ensure_runs(args)
    quality = clinical_quality(clinical)
    print("clinical model:", fmt(quality["balanced_accuracy"]), fmt(quality["roc_auc_macro"]),
          flush=True)
    seeds = seed_table([clinical, *map(Path, args.clinical_seeds)])
    watermark = watermark_attention(clinical)
    print("watermark:", watermark, flush=True)
    det = detection(derm, clinical, router)
    print("detection:", det["flags"], flush=True)
    served = load(derm, clinical, router, args.requests, args.clients)
    print("load:", served, flush=True)
    decode = phone_decode()
    print("decode:", decode, flush=True)
    derm_m = json.loads((derm / "metrics.json").read_text())
    router_meta = json.loads((router / "router.json").read_text())
    report = {"clinical_model": quality, "clinical_seeds": seeds,
              "watermark_gradcam": watermark, "detection": det,
              "router": {k: router_meta.get(k) for k in ("types", "fit_images", "val",
                                                          "backbone", "size", "c")},
              "serve": served, "phone_decode": decode,
              "dermoscopy_model": {"run": derm.name, "epochs": args.derm_epochs,
                                   "balanced_accuracy": derm_m.get("balanced_accuracy"),
                                   "roc_auc_macro": derm_m.get("roc_auc_macro")},
              "machine": machine(), "date": time.strftime("%Y-%m-%d")}
    q, f, t = quality, det["flags"], det["types"]

    def rate(k: str, key: str) -> str:
        return f"{f[k][key]}/{f[k]['images']} ({f[k][key] / max(1, f[k]['images']):.1%})"

    md = [f"# The photo app's two models ({report['date']}, {machine()['cpus']} CPUs)", "",
          "## Clinical-photo model (configs/dermnet_clinical.yaml, DermNet NZ test split)", "",
          f"Balanced accuracy **{fmt(q['balanced_accuracy'])}**, macro AUC "
          f"**{fmt(q['roc_auc_macro'])}**, macro-F1 {fmt(q['macro_f1'])}, accuracy "
          f"{fmt(q['accuracy'])} on {q['test_images']} test images (duplicate-grouped split; "
          f"{q['epochs_run']} epochs, best {q['best_epoch']}, early stopping; training "
          f"{q['train_minutes']} min wall on the CPUs above; the fastest fine-tuning epoch "
          f"took {q['fastest_epoch_seconds']} s, "
          f"{fmt((q['fastest_epoch_seconds'] or 0) * (q['epochs_run'] or 0) / 60, 1)} min "
          "for all epochs at that speed). With flip test-time augmentation (reported, not "
          f"served): balanced accuracy {fmt(q['tta_balanced_accuracy'])}.", "",
          "Per seed (the same recipe and split, `--set train.seed=N`):", "",
          "| seed | bal. acc | AUC | macro-F1 | flip TTA bal. acc | epochs (best) | train min |",
          "| --- | --- | --- | --- | --- | --- | --- |",
          *(f"| {r['seed']} | {fmt(r['balanced_accuracy'])} | {fmt(r['roc_auc_macro'])} | "
            f"{fmt(r['macro_f1'])} | {fmt(r['tta_balanced_accuracy'])} | {r['epochs_run']} "
            f"({r['best_epoch']}) | {r['train_minutes']} |" for r in seeds["rows"]),
          "| **mean ± sd** | " + " | ".join(
              f"**{pm(vals)}**" if vals else "" for vals in
              ([r[k] for r in seeds["rows"] if r[k] is not None] for k in SEED_COLUMNS))
          + f" | | {seeds['summary']['train_minutes']['mean']:.1f} |", "",
          "| class | precision | recall | F1 | AUC | test images |",
          "| --- | --- | --- | --- | --- | --- |"]
    for c, v in q["per_class"].items():
        md.append(f"| {c} | {fmt(v.get('precision'))} | {fmt(v.get('recall'))} | "
                  f"{fmt(v.get('f1'))} | {fmt(v.get('roc_auc'))} | {v.get('support')} |")
    md += ["", "Largest confusions (true -> predicted, images, share of the true class):", ""]
    md += [f"- {c['true']} -> {c['predicted']}: {c['images']} ({c['share_of_true']:.0%})"
           for c in q["top_confusions"]]
    w = watermark
    md += ["", f"Watermark check (Grad-CAM of the predicted class on {w['images']} test "
           f"images): {w['cam_mass_share_mean']:.1%} of the heat-map mass falls in the "
           f"DermNet logo's box, which covers {w['box_area_share']:.1%} of the image (ratio "
           f"{w['ratio_to_area']}); {w['images_peaking_in_box']} heat-maps peak inside it.", "",
           "## Image-type router (held-out images; none seen in fitting)", "",
           "| true \\ routed | " + " | ".join(t) + " |", "| --- |" + " --- |" * len(t)]
    md += [f"| {t[i]} | " + " | ".join(str(v) for v in row) + " |"
           for i, row in enumerate(det["confusion"])]
    md += ["", "| | router alone (default) | router or the model's own detectors |",
           "| --- | --- | --- |",
           f"| non-skin photos flagged | {rate('not_skin', 'flagged_router')} | "
           f"{rate('not_skin', 'flagged_router_or_model')} |",
           f"| dermoscopic test photos wrongly flagged | {rate('dermoscopic', 'flagged_router')} "
           f"| {rate('dermoscopic', 'flagged_router_or_model')} |",
           f"| clinical test photos wrongly flagged | {rate('clinical', 'flagged_router')} | "
           f"{rate('clinical', 'flagged_router_or_model')} |", "",
           "Non-skin photos by source (flagged/images): " + ", ".join(
               f"{k} {v['flagged']}/{v['images']}" for k, v in
               det["non_skin_by_source"].items()), "",
           "Missed: " + (", ".join(det["non_skin_missed"]) or "none"), "",
           "## Serving both models", "",
           f"{served['requests']} uploads from {served['clients']} signed-in clients on "
           f"127.0.0.1 (half HAM10000, half DermNet test photos; answered by: "
           f"{served['answered_by']}), backend {served['backend']}.", "",
           "| p50 ms | p95 ms | max ms | req/s | peak RSS MB | status codes |",
           "| --- | --- | --- | --- | --- | --- |",
           f"| {served['latency_ms']['p50']} | {served['latency_ms']['p95']} | "
           f"{served['latency_ms']['max']} | {served['throughput_rps']} | "
           f"{served['peak_rss_mb']} | {served['status_codes']} |", "",
           f"Phone photos (median of 5): a 12 MP JPEG decodes in "
           f"{decode['jpeg_12mp_service_decode_ms']} ms as the service reads it (draft mode, "
           f"still 1,024 px a side) against {decode['jpeg_12mp_full_decode_ms']} ms in full; a "
           f"12 MP HEIC in {decode['heic_12mp_service_decode_ms']} ms.", "",
           f"Dermoscopy model served: the HAM10000 default recipe cut to {args.derm_epochs} "
           f"epochs of 60 batches (test balanced accuracy "
           f"{fmt(derm_m.get('balanced_accuracy'))}); the router, latency and memory do not "
           "depend on its accuracy."]
    write_results("app_models", report, md)


if __name__ == "__main__":
    main()
