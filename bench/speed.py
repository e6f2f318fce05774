"""Benchmark: how fast on this machine. Ratios are measured within one run of this script.

1. Inference of the default backbone at the default recipe's input size, batch 1 and 32:
   PyTorch eager (NCHW), PyTorch channels_last, ONNX Runtime (CPU); ms/image and images/s,
   beside the FLOP floor (FLOPs per image / measured peak FLOP/s of a large fp32 matmul).
2. Input pipeline: images/s of a DataLoader reading the decoded uint8 cache vs decoding every
   JPEG, with the training augmentation and without it, and the cost of each augmentation step.
3. Training throughput at the default resolution, the previous default against the current
   one in this run: the model step alone (forward + backward + AdamW on a synthetic batch)
   and real epochs (the recipe's loader, augmentation and step); with ``--training-levers``
   only the levers on the step (bf16, torch.compile, batch size, frozen BatchNorm, frozen
   stages), to ``bench/results/speed_training.{json,md}``.
4. Peak resident memory of a short ``dermalab train`` and, with ``--run``, of ``dermalab
   serve`` answering uploads.

    .venv/bin/python bench/speed.py [--run RUN_DIR] [--size 128] [--threads N]

Writes ``bench/results/speed.{json,md}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import HAM, LITE0, ONE_MODEL, PREVIOUS_DEFAULT, REPO, machine, write_results

from dermalab.core.config import load_config


def timed(fn: Callable[[], Any], min_seconds: float = 2.0, min_reps: int = 5) -> float:
    """Median seconds of ``fn()`` after two warm-up calls."""
    fn()
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_flops() -> float:
    """FLOP/s of a 2048x2048 fp32 matmul: what this CPU can reach at best through torch."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    return 2 * 2048**3 / timed(lambda: a @ b, 1.0)


def model_flops(model: torch.nn.Module, size: int) -> float:
    """FLOPs of one image's forward pass (torch's FlopCounterMode: 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, size, size))
    return float(counter.get_total_flops())


def inference(model: torch.nn.Module, size: int, tmp: Path) -> list[dict[str, Any]]:
    import onnxruntime as ort

    model.eval()
    onnx_path = tmp / "model.onnx"
    torch.onnx.export(model, (torch.randn(2, 3, size, size),), str(onnx_path), dynamo=False,
                      opset_version=17, input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    opts = ort.SessionOptions()
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    rows = []
    for batch in (1, 32):
        x = torch.randn(batch, 3, size, size)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        xn = x.numpy()
        # .to() converts in place; outside inference_mode so the weights stay trainable.
        model.to(memory_format=torch.contiguous_format)
        with torch.inference_mode():
            eager = timed(lambda x=x: model(x))
        model.to(memory_format=torch.channels_last)
        with torch.inference_mode():
            chl = timed(lambda x=x_cl: model(x))
        onnx = timed(lambda x=xn: sess.run(None, {"image": x}))
        for name, sec in (("PyTorch eager (NCHW)", eager), ("PyTorch channels_last", chl),
                          ("ONNX Runtime", onnx)):
            rows.append({"engine": name, "batch": batch, "ms_per_image": 1000 * sec / batch,
                         "images_per_s": batch / sec, "speedup_vs_eager": eager / sec})
    return rows


def input_pipeline(size: int, n: int) -> dict[str, Any]:
    """Images/s of iterating a DataLoader (batch 32, no model) over the decoded uint8 cache vs
    decoding every JPEG, with the training augmentation and without it (evaluation transforms).

    The cache saves the decode and resize; the augmentation costs the same on both paths, so
    the ratio with augmentation is bounded by how much of the time the augmentation takes.
    """
    from dermalab.data.cache import DecodingImages, build_cache, default_cache_dir
    from dermalab.data.dataset import ImageDataset, make_loader
    from dermalab.data.sources import load_source
    from dermalab.data.transforms import eval_transform, train_transform

    cfg = load_config(REPO / "configs" / "ham10000_default.yaml", [f"data.source={HAM}"])
    data = load_source(cfg.data)
    ids = [s.sample_id for s in data.samples[:n]]
    targets = [0] * len(ids)
    mean, std = [0.5] * 3, [0.5] * 3
    cached = build_cache(data, size, cfg.data.resize_mode, default_cache_dir(), progress=False)
    stores = {"cache": cached, "decode": DecodingImages(data, size, cfg.data.resize_mode)}
    out: dict[str, Any] = {}
    for tf_name, tf in (("train", train_transform(size, mean, std, cfg.data.augment)),
                        ("eval", eval_transform(mean, std))):
        for name, store in stores.items():
            loader = make_loader(ImageDataset(store, ids, targets, tf), 32, shuffle=True)
            t0 = time.perf_counter()
            for _ in loader:
                pass
            out[f"{tf_name}_{name}"] = len(ids) / (time.perf_counter() - t0)
        out[f"{tf_name}_ratio"] = out[f"{tf_name}_cache"] / out[f"{tf_name}_decode"]
    out["augment_ms"] = augmentation_costs(cached, ids[:256], size, cfg)
    return out


def augmentation_costs(store: Any, ids: list[str], size: int, cfg: Any) -> dict[str, float]:
    """ms/image of each step of the training transform, on cached uint8 images."""
    from torchvision.transforms import v2

    from dermalab.data.transforms import train_transform

    imgs = [torch.from_numpy(store.get(i)).permute(2, 0, 1).contiguous() for i in ids]
    steps = list(train_transform(size, [0.5] * 3, [0.5] * 3, cfg.data.augment).transforms)
    # The last two (to float, normalise) only work together: Normalize needs a float tensor.
    steps[-2:] = [v2.Compose(steps[-2:])]
    out = {}
    for step in steps:
        name = "ToDtype+Normalize" if isinstance(step, v2.Compose) else type(step).__name__
        if isinstance(step, v2.ColorJitter) and step.hue is not None:
            # Hue is the costly part of ColorJitter (an RGB -> HSV -> RGB round trip): shown
            # apart so the price of data.augment.hue is visible.
            no_hue = v2.ColorJitter(step.brightness, step.contrast, step.saturation)
            hue_only = v2.ColorJitter(hue=step.hue)
            for label, t in ((f"{name} without hue", no_hue), ("hue jitter", hue_only)):
                out[label] = 1000 * timed(lambda t=t: [t(x) for x in imgs], 1.0, 2) / len(imgs)
            continue
        out[name] = 1000 * timed(lambda step=step: [step(x) for x in imgs], 1.0, 2) / len(imgs)
    return out


def train_step(model: torch.nn.Module, size: int, batch: int = 32, *, bf16: bool = False,
               compiled: bool = False, freeze_bn: bool = False,
               freeze_stages: int = 0, fold: bool = False, same_pad: bool = False,
               fused: bool = False) -> Callable[[], None]:
    """One forward + backward + AdamW step on a fresh channels_last copy of ``model`` and a
    fixed synthetic batch, as in training; optionally under bf16 autocast, through
    ``torch.compile``, with BatchNorm frozen (no statistics, no affine gradients), or with the
    stem and first stages frozen as ``model.freeze_stages`` does, and their BatchNorms folded
    into their convolutions (``model.fold_frozen_bn``), TF "same" padding computed inside
    the convolutions (``model.static_same_pad``), and AdamW's fused kernel
    (``optim.fused``)."""
    import copy

    from dermalab.core.models import set_body_trainable
    from dermalab.train.fold import fold_frozen_batchnorms
    from dermalab.train.loop import frozen_bn_eval
    from dermalab.train.same_pad import use_static_same_padding

    m = copy.deepcopy(model).train().to(memory_format=torch.channels_last)
    # Before the BatchNorm lever: set_body_trainable switches every other body weight on.
    set_body_trainable(m, True, freeze_stages)
    if freeze_bn:
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.eval().requires_grad_(False)
    if fold and not fold_frozen_batchnorms(m, size):
        raise RuntimeError("no BatchNorm folded: the fold lever measures nothing")
    if same_pad and not use_static_same_padding(m):
        raise RuntimeError("no same-padded layer: the padding lever measures nothing")
    adamw = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4,
                              fused=fused)
    fwd = torch.compile(m) if compiled else m
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 7, (batch,))

    def step() -> None:
        frozen_bn_eval(m)
        adamw.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(fwd(x), y)
        loss.backward()
        adamw.step()

    return step


LEVERS: list[tuple[str, dict[str, Any]]] = [
    ("plain, batch 32", {}), ("bf16 autocast", {"bf16": True}),
    ("torch.compile (inductor)", {"compiled": True}), ("batch 16", {"batch": 16}),
    ("batch 64", {"batch": 64}), ("BatchNorm frozen", {"freeze_bn": True}),
    *((f"stem + {k} stage{'s' * (k > 1)} frozen", {"freeze_stages": k}) for k in (1, 2, 3))]


def alternating(items: list[Any], r: int) -> list[Any]:
    """``items`` in round ``r``'s timing order: as given in even rounds, reversed in odd ones
    (a lever timed right after another one can run slower or faster for it)."""
    return items if r % 2 == 0 else items[::-1]


def training_levers(model: torch.nn.Module, size: int, rounds: int = 3,
                    levers: list[tuple[str, dict[str, Any]]] = LEVERS) -> list[dict[str, Any]]:
    """Training images/s (:func:`train_step`) of levers on the model step itself, as ratios
    to the first (the plain step at batch 32): bf16 autocast (the CPU has AVX512-BF16 kernels
    in oneDNN), ``torch.compile`` (Inductor, after its compile time), batch 16 and 64,
    BatchNorm frozen, and the stem + first stages frozen (``model.freeze_stages``). A lever's
    ``"model"`` option times another model in place of ``model``."""
    rows: list[dict[str, Any]] = []
    steps: list[Callable[[], None]] = []
    for name, lever in levers:
        opt = dict(lever)
        step = train_step(opt.pop("model", model), size, **opt)
        t0 = time.perf_counter()
        step()
        rows.append({"lever": name, "batch": opt.get("batch", 32),
                     "first_step_s": time.perf_counter() - t0, "rounds": []})
        steps.append(step)
    # Interleaved rounds, so that drift of the machine's speed during the run falls on every
    # lever alike, in alternating order; the median round counts.
    for r in range(rounds):
        for row, step in alternating(list(zip(rows, steps, strict=True)), r):
            row["rounds"].append(row["batch"] / timed(step, 3.0, 4))
    for row in rows:
        row["images_per_s"] = statistics.median(row["rounds"])
        row["ratio"] = row["images_per_s"] / rows[0]["images_per_s"]
    return rows


def training_end_to_end(size: int, variants: list[tuple[str, list[str]]], batches: int = 30,
                        rounds: int = 5) -> list[dict[str, Any]]:
    """Training images/s of real ``dermalab train`` epochs cut to ``batches`` batches: the
    recipe's own data loader (cached uint8 images, augmentation, sampler), model step,
    optimiser and weight-average update, as ``fit`` runs them; per variant of the default recipe
    (``--set``-style overrides), timed in interleaved rounds, the median round counting."""
    from dermalab.core.runs import RunPaths
    from dermalab.train.fit import ema_updater, setup_training
    from dermalab.train.loop import train_one_epoch

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = []
        for i, (name, sets) in enumerate(variants):
            cfg = load_config(REPO / "configs" / "ham10000_default.yaml",
                              [f"data.source={HAM}", f"data.image_size={size}",
                               "tracking.enabled=false", "model.freeze_epochs=0", *sets])
            t = setup_training(cfg, RunPaths(Path(tmp) / str(i)), progress=False)
            runs.append(t)
            rows.append({"variant": name, "sets": sets, "rounds": []})
        for r in range(-1, rounds):  # round -1 warms each variant up (kernels, workers)
            for row, t in alternating(list(zip(rows, runs, strict=True)), r):
                stats = train_one_epoch(t.model, t.train_loader, t.loss_fn, t.optimizer,
                                        t.accelerator, channels_last=t.cfg.model.channels_last,
                                        batch_transform=t.batch_augment,
                                        after_step=ema_updater(t),
                                        max_batches=batches if r >= 0 else 3,
                                        progress=False)
                if r >= 0:
                    row["rounds"].append(stats.images_per_second)
    for row in rows:
        row["images_per_s"] = statistics.median(row["rounds"])
        row["ratio"] = row["images_per_s"] / rows[0]["images_per_s"]
    return rows


def train_peak_rss(size: int) -> float:
    """Peak RSS (MB) of a short real ``dermalab train`` (20 batches, then the evaluation and
    the trust stage: calibration, serving detectors), from that child's own rusage."""
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen([sys.executable, "-m", "dermalab", "train", "-c",
                                 str(REPO / "configs" / "ham10000_default.yaml"), "--data",
                                 str(HAM), "--out", f"{tmp}/run", "--no-progress", "--set",
                                 *ONE_MODEL, f"data.image_size={size}", "train.epochs=1",
                                 "train.max_batches=20", "tracking.enabled=false",
                                 "eval.report=false", "eval.gallery=0"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            raise RuntimeError(f"dermalab train exited with {proc.returncode}")
    return usage.ru_maxrss / 1024


def serve_peak_rss(run: Path, uploads: int = 50) -> float:
    """Peak RSS (MB, VmHWM) of ``dermalab serve RUN`` after answering real uploads."""
    import httpx

    sys.path.insert(0, str(REPO))
    from tests.s3server import free_ports

    port = free_ports(1)[0]
    # The upload limit is raised, as in bench/serve_load.py, so 50 quick uploads measure
    # memory and not the limiter (which still runs on every request).
    proc = subprocess.Popen([sys.executable, "-m", "dermalab", "serve", str(run), "--port",
                             str(port), "--rate-upload", "100000/minute"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        # Uploads need a session: an anonymous one, as a first-time visitor's phone gets.
        session = httpx.post(f"{url}/v1/auth/anonymous", timeout=60,
                             headers={"X-Requested-With": "dermalab"})
        session.raise_for_status()
        bearer = {"Authorization": f"Bearer {session.json()['token']}"}
        images = sorted((HAM / "images").glob("*.jpg"))[:uploads]
        for p in images:
            r = httpx.post(f"{url}/v1/analyses", files={"file": (p.name, p.read_bytes(),
                                                                 "image/jpeg")},
                           headers=bearer, timeout=60)
            r.raise_for_status()
        status = Path(f"/proc/{proc.pid}/status").read_text()
        hwm = next(line for line in status.splitlines() if line.startswith("VmHWM"))
        return int(hwm.split()[1]) / 1024
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--run", help="a trained run (with serving thresholds) for the server RSS")
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--pipeline-images", type=int, default=1024)
    ap.add_argument("--training-levers", action="store_true",
                    help="only the training-step levers, to bench/results/speed_training.*")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from dermalab.core.models import create_model

    cfg = load_config(REPO / "configs" / "ham10000_default.yaml")
    model, _, origin = create_model(cfg.model, 7)
    if args.training_levers:
        rows = training_levers(model, args.size)
        report = {"date": time.strftime("%Y-%m-%d"), "machine": machine(),
                  "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                  "backbone": cfg.model.backbone, "size": args.size, "levers": rows}
        md = [f"# Training step levers ({report['date']}, {report['machine']['cpus']} CPUs, "
              f"{report['machine']['cpu_model']}, torch {torch.__version__}, threads "
              f"{report['torch_threads']})", "",
              f"{cfg.model.backbone} at {args.size} px, forward + backward + AdamW, "
              "channels_last, synthetic batches (the model step alone, no data loading). "
              "Ratios against the plain step, measured in this one run: the levers are timed "
              "in interleaved rounds and the median round counts.", "",
              "| lever | batch | images/s (median) | rounds | vs plain | first step (s) |",
              "| --- | --- | --- | --- | --- | --- |"]
        md += [f"| {r['lever']} | {r['batch']} | {r['images_per_s']:.1f} | "
               + " / ".join(f"{v:.1f}" for v in r["rounds"])
               + f" | {r['ratio']:.2f}x | {r['first_step_s']:.1f} |" for r in rows]
        write_results("speed_training", report, md)
        return
    flops = model_flops(model.eval(), args.size)
    peak = peak_flops()
    with tempfile.TemporaryDirectory() as tmp:
        infer = inference(model, args.size, Path(tmp))
    pipe = input_pipeline(args.size, args.pipeline_images)
    # Training, old against new in this one run: the model step alone and real epochs. The
    # levers up to fused AdamW were made on EfficientNet-Lite0 (the default until the backbone
    # became MobileNetV2), so their chain runs on Lite0 and the default's backbone comes last.
    lite0, _, _ = create_model(dataclasses.replace(cfg.model,
                                                   backbone="tf_efficientnet_lite0"), 7)
    stages = cfg.model.freeze_stages
    frozen: dict[str, Any] = {"model": lite0, "freeze_stages": stages}
    pad = {**frozen, "same_pad": True}
    fold = {**pad, "fold": True}
    fused = {**fold, "fused": True}
    # The default's own levers, as its config sets them; the padding rewrite only where the
    # backbone has TF "same" padding (MobileNetV2 pads symmetrically: nothing to rewrite).
    from dermalab.train.same_pad import same_padding_layers

    default = {"model": model, "freeze_stages": stages, "fold": cfg.model.fold_frozen_bn,
               "fused": cfg.optim.fused,
               "same_pad": cfg.model.static_same_pad and bool(same_padding_layers(model))}
    step_rows = training_levers(model, args.size, rounds=8, levers=[
        ("Lite0, every stage trains (previous default)", {"model": lite0}),
        (f"Lite0, stem + {stages} stages frozen", frozen),
        ("+ same padding inside the convolutions", pad),
        ("+ frozen BatchNorms folded", fold),
        ("+ fused AdamW (the Lite0 default of 2026-11-30)", fused),
        (f"{cfg.model.backbone} (default)", default)])
    train_ips = step_rows[0]["images_per_s"]
    new_off = [*LITE0, "optim.fused=false"]
    exact_off = ["model.fold_frozen_bn=false", "model.static_same_pad=false", *new_off]
    e2e = training_end_to_end(args.size, [
        ("previous default: Lite0, every stage trains, augmentation per image in the loader",
         PREVIOUS_DEFAULT),
        ("Lite0, stages frozen + batch augmentation (the default of 2026-11-29)", exact_off),
        ("+ same padding inside the convolutions", ["model.fold_frozen_bn=false", *new_off]),
        ("+ frozen BatchNorms folded", new_off),
        ("+ fused AdamW (the Lite0 default of 2026-11-30)", LITE0),
        (f"{cfg.model.backbone} (default)", [])])
    train_rss = train_peak_rss(args.size)
    serve_rss = serve_peak_rss(Path(args.run)) if args.run else None
    # Without a run to serve, the last measured figure is carried over, with its date.
    previous = REPO / "bench" / "results" / "speed.json"
    serve_rss_date = time.strftime("%Y-%m-%d")
    if serve_rss is None and previous.is_file():
        old = json.loads(previous.read_text())
        serve_rss = old.get("serve_peak_rss_mb")
        serve_rss_date = old.get("serve_peak_rss_date", old.get("date"))
    serve_load = REPO / "bench" / "results" / "serve_load.json"
    report = {
        "date": time.strftime("%Y-%m-%d"), "machine": machine(),
        "torch_threads": torch.get_num_threads(), "backbone": cfg.model.backbone,
        "weights": origin, "size": args.size, "gflops_per_image": flops / 1e9,
        "peak_gflops": peak / 1e9, "flop_floor_ms_per_image": 1000 * flops / peak,
        "inference": infer, "input_pipeline": pipe, "train_images_per_s": train_ips,
        "training_step": step_rows, "training_end_to_end": e2e,
        "train_peak_rss_mb": train_rss, "serve_peak_rss_mb": serve_rss,
        "serve_peak_rss_date": serve_rss_date,
        "serve_load": json.loads(serve_load.read_text()) if serve_load.is_file() else None,
    }
    floor = report["flop_floor_ms_per_image"]
    md = [f"# Speed ({report['date']}, {report['machine']['cpus']} CPUs, "
          f"{report['machine']['cpu_model']}, torch threads {report['torch_threads']})", "",
          f"{cfg.model.backbone} at {args.size} px: {flops / 1e9:.3f} GFLOPs per image; a "
          f"2048^2 fp32 matmul reaches {peak / 1e9:.1f} GFLOP/s, so the FLOP floor is "
          f"{floor:.2f} ms/image.", "",
          "| engine | batch | ms/image | images/s | vs eager | vs FLOP floor |",
          "| --- | --- | --- | --- | --- | --- |"]
    md += [f"| {r['engine']} | {r['batch']} | {r['ms_per_image']:.2f} | "
           f"{r['images_per_s']:.1f} | {r['speedup_vs_eager']:.2f}x | "
           f"{r['ms_per_image'] / floor:.1f}x |" for r in infer]
    md += ["", "| what | value |", "| --- | --- |",
           f"| input pipeline with training augmentation: cache / decoding every JPEG | "
           f"{pipe['train_cache']:.0f} / {pipe['train_decode']:.0f} images/s = "
           f"**{pipe['train_ratio']:.1f}x** |",
           f"| input pipeline without augmentation (evaluation): cache / decoding | "
           f"{pipe['eval_cache']:.0f} / {pipe['eval_decode']:.0f} images/s = "
           f"**{pipe['eval_ratio']:.1f}x** |",
           "| training augmentation, ms/image per step | "
           + ", ".join(f"{k} {v:.2f}" for k, v in pipe["augment_ms"].items()) + " |",
           *(f"| training step alone (fwd+bwd+AdamW, batch 32, channels_last), {r['lever']} | "
             f"{r['images_per_s']:.1f} images/s ({r['ratio']:.2f}x; rounds "
             + " / ".join(f"{v:.0f}" for v in r["rounds"]) + ") |" for r in step_rows),
           *(f"| real training epochs (loader + augmentation + step, 30 batches), "
             f"{r['variant']} | {r['images_per_s']:.1f} images/s ({r['ratio']:.2f}x; rounds "
             + " / ".join(f"{v:.0f}" for v in r["rounds"]) + ") |" for r in e2e),
           f"| peak RSS, `dermalab train` (20 batches + evaluation) | {train_rss:.0f} MB |",
           "| peak RSS, `dermalab serve` after 50 uploads | "
           + (f"{serve_rss:.0f} MB (measured {serve_rss_date}) |" if serve_rss
              else "not measured (no --run) |")]
    if report["serve_load"]:
        s = report["serve_load"]
        lat = s["latency_ms"]
        md.append(f"| API load ({s['clients']} clients, {s['requests']} uploads, backend "
                  f"{s['backend']}; `bench/serve_load.py`, {s['date']}) | p50 {lat['p50']:.0f} "
                  f"ms, p95 {lat['p95']:.0f} ms, {s['throughput_rps']:.1f} req/s, "
                  f"{s['errors_5xx']} errors; see [serve_load.md](serve_load.md) |")
    write_results("speed", report, md)


if __name__ == "__main__":
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    main()
