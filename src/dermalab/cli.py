"""``dermalab`` command line: parses arguments and calls one function per command.

Errors caused by input (bad files, configs, splits) print one line naming the problem and exit
with code 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dermalab.core.errors import DermalabError
from dermalab.core.settings import settings


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="YAML recipe (see configs/)")
    p.add_argument("--data", help="dataset: folder, HAM10000 CSV/folder, .npz or hmnist CSV")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[],
                   metavar="KEY=VALUE", help="override config keys, e.g. train.epochs=1")
    p.add_argument("--split-file", help="external split: CSV of sample_id (or image_id) and "
                   "split (train/val/test); same as --set data.split_file=FILE")


def _config_overrides(args: argparse.Namespace) -> list[str]:
    """``--set`` plus the ``--data``/``--format``/``--split-file`` shortcuts, as overrides."""
    overrides = list(args.overrides)
    if getattr(args, "data", None):
        overrides.append(f"data.source={args.data}")
    if getattr(args, "format", None):
        overrides.append(f"data.format={args.format}")
    if getattr(args, "split_file", None):
        overrides.append(f"data.split_file={args.split_file}")
    return overrides


def _load_cfg(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from dermalab.core.config import load_config

    cfg = load_config(args.config, _config_overrides(args))
    src = cfg.data.source
    from_file = (args.config and not getattr(args, "data", None)
                 and not getattr(args, "source", None)  # data inspect's positional SOURCE
                 and not any(o.startswith("data.source=") for o in args.overrides))
    from dermalab.data.storage import is_dataset_word

    if from_file and src and "://" not in src and not Path(src).exists() \
            and not is_dataset_word(src):
        raise DermalabError(f"dataset not found: {src} (data.source of {args.config}, resolved "
                            "from the config file's folder); pass --data PATH to use another")
    return cfg


def cmd_data_inspect(args: argparse.Namespace) -> int:
    """``dermalab data inspect [SOURCE]``."""
    from dermalab.data.inspect import format_report, inspect_dataset, plot_split_counts

    cfg = _load_cfg(args)
    split_out = Path(args.split_out) if args.split_out else None
    report = inspect_dataset(cfg.data, args.source, split_out)
    if split_out is not None:
        plot_split_counts(report, split_out / "class_counts.png")
        (split_out / "inspect.json").write_text(json.dumps(report, indent=2))
    if args.json:
        print(json.dumps(report))
    else:
        print(format_report(report))
    strict = not cfg.data.skip_bad
    bad = bool(report["unreadable"]) or bool(report["bad"])
    if bad and strict:
        print(f"error: {len(report['unreadable'])} unreadable image(s)", file=sys.stderr)
    bad_masks = (report.get("masks") or {}).get("bad") or []
    if bad_masks:
        print(f"{'error' if strict else 'warning'}: {len(bad_masks)} unusable mask(s), e.g. "
              f"{bad_masks[0]['error']}" + ("" if strict else " (data.skip_bad=true)"),
              file=sys.stderr)
    leak = report["group_overlap"] > 0 or report["duplicate_overlap"] > 0
    if leak:
        print(f"error: split leaks: {report['group_overlap']} group(s) and "
              f"{report['duplicate_overlap']} identical file(s) cross splits", file=sys.stderr)
    return 1 if ((bad or bad_masks) and strict) or leak else 0


def cmd_data_download(args: argparse.Namespace) -> int:
    """``dermalab data download NAME [--to DIR] [--parts ...] [--mirror URL]``."""
    from dermalab.data.download import download_dataset

    root = Path(args.to).expanduser() if args.to else None
    path = download_dataset(args.name, root=root, parts=args.parts or None,
                            mirror=args.mirror or settings().mirror,
                            catalog=args.catalog, progress=not args.no_progress)
    print(path)
    return 0


def cmd_data_list(args: argparse.Namespace) -> int:
    """``dermalab data list``: the named datasets, their parts and what is downloaded."""
    from dermalab.data.catalog import data_home, load_catalog, local_state

    root = Path(args.to).expanduser() if args.to else data_home()
    rows: list[dict[str, Any]] = []
    for entry in load_catalog(args.catalog).values():
        state = local_state(entry, root)
        rows.append({
            "name": entry.name, "title": entry.title, "license": entry.license,
            "citation": list(entry.citation), "homepage": entry.homepage,
            "size": entry.size_text(entry.default_parts()) if not entry.manual
            else "not downloadable",
            "manual": entry.manual or None,
            "parts": {p: {"default": part.default, "description": part.description,
                          "size": entry.size_text([p]),
                          "downloaded": p in state.parts if state.managed else None}
                      for p, part in entry.parts.items()},
            "path": str(state.path),
            "cached": ("downloaded" if state.managed else "local copy") if state.exists
            else "no",
        })
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"datasets in {root} (DERMALAB_DATA)\n")
    for r in rows:
        print(f"{r['name']}: {r['title']}")
        size = r["size"] if r["manual"] else f"{r['size']} (default parts)"
        print(f"  size {size}, license: {r['license']}, cached: {r['cached']}")
        if r["manual"]:
            print(f"  by hand: {r['manual']}")
        for p, info in r["parts"].items():
            mark = {True: "downloaded", False: "-", None: ""}[info["downloaded"]]
            print(f"  part {p:<9} {'default ' if info['default'] else 'optional'} "
                  f"{info['size']:<22} {mark:<10} {info['description']}")
        print("  cite: " + "\n        ".join(r["citation"]) + "\n")
    return 0


def cmd_data_push(args: argparse.Namespace) -> int:
    """``dermalab data push LOCAL_DIR s3://bucket/prefix``."""
    from dermalab.data.s3 import push

    t0 = time.perf_counter()
    res = push(args.local, args.uri, endpoint_url=args.endpoint_url, workers=args.workers,
               progress=not args.json)
    return _report_sync(res.as_dict(), time.perf_counter() - t0, args.json,
                        f"pushed {args.local} -> {args.uri}")


def cmd_data_pull(args: argparse.Namespace) -> int:
    """``dermalab data pull s3://bucket/prefix LOCAL_DIR``."""
    from dermalab.data.s3 import pull

    t0 = time.perf_counter()
    res = pull(args.uri, args.local, endpoint_url=args.endpoint_url, workers=args.workers,
               progress=not args.json)
    return _report_sync(res.as_dict(), time.perf_counter() - t0, args.json,
                        f"pulled {args.uri} -> {args.local}")


def _report_sync(res: dict[str, int], seconds: float, as_json: bool, what: str) -> int:
    if as_json:
        print(json.dumps({**res, "seconds": round(seconds, 3)}))
    else:
        print(f"{what}: {res['files']} files, {res['transferred']} transferred "
              f"({res['bytes_transferred'] / 1e6:.1f} MB), {res['skipped']} unchanged, "
              f"{res['verified']} verified, {seconds:.1f}s")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """``dermalab train``."""
    from dermalab.core.runs import RunPaths
    from dermalab.pipeline import next_steps, resume_run, train_run

    if args.resume:
        if args.config or args.overrides or args.data:
            raise DermalabError("--resume takes the run's saved config; do not pass "
                                "--config/--set/--data with it")
        resume_run(args.resume, progress=not args.no_progress, redo_final=args.redo_final)
        print(next_steps(RunPaths(Path(args.resume))))
        return 0
    cfg = _load_cfg(args)
    out = args.out or f"runs/{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    paths = RunPaths(Path(out))
    # An unfinished ensemble folder is fine: members of the same config are reused (checked).
    if paths.last.exists() or paths.is_finished or (paths.members.is_dir()
                                                    and cfg.model.members == 1):
        raise DermalabError(f"{out} already holds a run; use --resume {out} or another --out")
    train_run(cfg, out, progress=not args.no_progress)
    print(next_steps(RunPaths(Path(out))))
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    """``dermalab tune``."""
    from dermalab.experiments.tune import TuneOptions, tune

    res = tune(TuneOptions(config=args.config, search=args.search, trials=args.trials,
                           out=args.out, sets=_config_overrides(args), storage=args.storage,
                           study=args.study, pruner=args.pruner, seed=args.seed,
                           heartbeat=args.heartbeat, progress=not args.no_progress))
    print(f"study {res['study']}: {res['trials']} trials {res['states']}; this worker ran "
          f"{res['ran_here']}")
    if "best_trial" in res:
        print(f"best: trial {res['best_trial']}, validation value {res['best_value']:.4f}, "
              f"{json.dumps(res['best_params'])}\nready to train: dermalab train -c "
              f"{Path(args.out) / 'best_config.yaml'}")
    if "importance_warning" in res:
        print(f"warning: {res['importance_warning']}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """``dermalab compare``."""
    from dermalab.experiments.compare import compare, parse_backbones

    compare(args.config, parse_backbones(args.backbones), args.out, _config_overrides(args),
            progress=not args.no_progress)
    print((Path(args.out) / "comparison.md").read_text())
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``dermalab evaluate RUN_DIR``."""
    from dermalab.evaluate.evaluate import evaluate_run

    res = evaluate_run(args.run_dir, data=args.data, split=args.split,
                       progress=not args.json, tta=args.tta)
    if args.json:
        print(json.dumps(res))
        return 0
    print(evaluation_text(res))
    return 0


def evaluation_text(res: dict[str, Any]) -> str:
    """``dermalab evaluate``'s screen: the served answers' metrics with their intervals."""
    from dermalab.core.intervals import with_interval

    ci = res.get("intervals") or {}

    def v(key: str) -> str:
        return with_interval(res.get(key), ci.get(key))

    lines = [f"{res['split']} ({res['n']} images from {res['data']}), the served answer for "
             f"each photo alone (tau {res['tau']:.2f}{', with TTA' if res['tta'] else ''}; "
             "95% lesion-grouped intervals):",
             f"  balanced accuracy {v('balanced_accuracy')}, accuracy {v('accuracy')}",
             f"  macro-F1 {v('macro_f1')}, ROC-AUC {v('roc_auc_macro')}",
             f"  calibration: ECE {res['ece_raw']:.4f} (softmax) -> {v('ece')} (served, "
             f"T = {res['temperature']:.3f}), NLL {res['nll_raw']:.4f} -> {res['nll']:.4f}"]
    mal = res.get("malignant")
    if mal and mal.get("sensitivity") is not None:
        lines.append(f"  possibly malignant at {mal['threshold']:.3f}: sensitivity "
                     f"{v('malignant_sensitivity')}, specificity {v('malignant_specificity')}")
    if res.get("with_metadata"):
        w = res["with_metadata"]
        lines.append(f"  with each image's own metadata (not the headline): balanced accuracy "
                     f"{w['balanced_accuracy']:.4f}, accuracy {w['accuracy']:.4f}")
    for c, r in res["per_class"].items():
        lines.append(f"  {c:<10} precision {r['precision']:.3f} recall {r['recall']:.3f} "
                     f"f1 {r['f1']:.3f} support {r['support']}")
    return "\n".join(lines)


def cmd_report(args: argparse.Namespace) -> int:
    """``dermalab report RUN_DIR``: redo calibration/analysis and write report.html."""
    from dermalab.core.runs import RunPaths
    from dermalab.pipeline import finalize_run

    m = finalize_run(args.run_dir, progress=True, serving=True if args.serving else None,
                     eval_overrides=args.set or None)
    print(f"{RunPaths(Path(args.run_dir)).report}: temperature {m['temperature']:.3f}, ECE "
          f"{m['ece_before']:.4f} -> {m['ece_after']:.4f}, NLL {m['nll_before']:.4f} -> "
          f"{m['nll_after']:.4f}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """``dermalab export RUN_DIR --format onnx``."""
    from dermalab.core.runs import RunPaths
    from dermalab.deploy.export import export_onnx

    meta = export_onnx(args.run_dir, args.out)
    out = Path(args.out) if args.out else RunPaths(Path(args.run_dir)).export
    par = meta["extra"]["parity"]
    print(f"wrote {out / 'model.onnx'} and {out / 'model.json'} (ONNX Runtime vs PyTorch: max "
          f"abs diff {par['max_abs_diff']:.2e}, argmax agreement {par['argmax_agreement']:.0%})")
    if args.quantize == "int8":
        from dermalab.deploy.quantize import quantize_int8

        q = quantize_int8(args.run_dir, args.out, activation_bits=args.activation_bits)
        print(f"wrote {out / q['file']}: {q['int8_bytes'] / 1e6:.1f} MB, {q['size_ratio']:.1f}x "
              f"smaller (int8 weights, {q['sixteen_bit_layers']} most sensitive layers int16, "
              f"{q['activation_bits']}-bit activations, {q['activation_ranges']} ranges); "
              f"on {q['check_images']} validation "
              f"images top-1 agreement with FP32 "
              f"{q['top1_agreement']:.1%}, max |dp| {q['max_abs_prob_diff']:.3f}, balanced "
              f"accuracy {q['balanced_accuracy_int8']:.3f} (FP32 "
              f"{q['balanced_accuracy_fp32']:.3f})")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """``dermalab predict MODEL IMAGE...``: every good image is analysed; each bad one is named
    on stderr, and the exit code is 2 if any failed."""
    from dermalab.deploy.predictor import Predictor

    predictor = Predictor.load(args.model)
    given = {k: v for k in ("age", "sex", "site") if (v := getattr(args, k)) is not None}
    if given and predictor.metadata_model is None:
        raise DermalabError(f"{args.model}: this model was not fitted with patient metadata "
                            "(eval.metadata); drop --age/--sex/--site, or run `dermalab "
                            "report RUN --set eval.metadata=[age,sex,localization]`")
    row, used = predictor.metadata_row(given)
    results = predictor.predict_each(args.images, top_k=args.top_k, tta=args.tta,
                                     masks_dir=args.masks, metadata=row)
    failed = [r for r in results if "error" in r]
    for r in failed:
        print(f"error: {r['error']}", file=sys.stderr)
    if args.json:
        print(json.dumps(results))
        return 2 if failed else 0
    d = predictor.info.decision
    print(f"model: {predictor.info.backbone} via {predictor.backend}, temperature "
          f"{d.temperature:.3f}, prior shift tau {d.tau:.2f} (decision support, not a "
          "diagnosis)")
    if used:
        print(f"weighing the patient's {', '.join(used)} beside each image")
    for r in results:
        if "error" in r:
            continue
        print(r["image"] + ("   (not sure: the top probability is below "
                            f"{r['uncertain_threshold']:.0%})" if r["uncertain"] else ""))
        for t in r["top"]:
            print(f"  {t['probability']:6.1%}  {t['class']:<8} {t['name']}")
        if "malignant_score" in r:
            t_mal = r["malignant_threshold"]
            line = f"  possibly malignant: {r['malignant_score']:.1%}"
            if t_mal is not None:
                line += f" (operating point {t_mal:.1%})"
            if r["malignant_flag"]:
                line += " -> at or above it: see a dermatologist soon"
            print(line)
    if failed:
        print(f"{len(failed)} of {len(results)} image(s) could not be analysed (listed above)",
              file=sys.stderr)
    return 2 if failed else 0


def cmd_segment_train(args: argparse.Namespace) -> int:
    """``dermalab segment train``."""
    from dermalab.segment.fit import train_segmenter

    if args.resume:
        if args.config or args.overrides or args.data:
            raise DermalabError("--resume takes the run's saved config; do not pass "
                                "--config/--set/--data with it")
        train_segmenter(None, args.resume, resume=True, progress=not args.no_progress)
        out = args.resume
    else:
        cfg = _load_cfg(args)
        out = args.out or f"runs/{cfg.name}-segment-{time.strftime('%Y%m%d-%H%M%S')}"
        train_segmenter(cfg, out, progress=not args.no_progress)
    print(f"\nrun: {out}\nnext:\n  dermalab segment predict {out} IMAGE... --out DIR"
          f"\n  dermalab segment export {out}")
    return 0


SHOWN_MEASUREMENTS = 20  # more images than this: a summary line instead of one per image


def _segment_inputs(args: list[str]) -> list[tuple[str, Path]]:
    """``(image path, where its mask goes relative to --out)`` for each argument: a file as
    ``<stem>_mask.png``; a folder's images (recursively, sorted) mirroring its sub-folders,
    which is a layout ``data.masks`` reads for folder-per-class datasets.

    Raises:
        DermalabError: a folder without images.
    """
    from dermalab.data.images import is_image_name

    out: list[tuple[str, Path]] = []
    for arg in args:
        root = Path(arg)
        if not root.is_dir():
            out.append((arg, Path(f"{root.stem}_mask.png")))
            continue
        found = sorted(p for p in root.rglob("*") if p.is_file() and is_image_name(p.name))
        if not found:
            raise DermalabError(f"{root}: a folder with no images (JPEG, PNG, ...) in it")
        out += [(str(p), p.relative_to(root).parent / f"{p.stem}_mask.png") for p in found]
    return out


def cmd_segment_predict(args: argparse.Namespace) -> int:
    """``dermalab segment predict RUN_DIR IMAGE|FOLDER...``: each photo's lesion mask at the
    photo's own size (``--out``: usable as ``data.masks`` to train a lesion-aware classifier
    on predicted masks) and its measurements; every good image is analysed, each bad one
    named (exit code 2 if any failed)."""
    import numpy as np
    from PIL import Image
    from tqdm import tqdm

    from dermalab.data.images import open_rgb
    from dermalab.segment.measure import measure_photo
    from dermalab.segment.predict import Segmenter

    seg = Segmenter.load(args.run_dir)
    seg.check_maps_back(args.run_dir)
    inputs = _segment_inputs(args.images)
    out = Path(args.out) if args.out else None
    results, failed = [], 0
    for path, rel in tqdm(inputs, desc="segment", unit="img", file=sys.stderr, leave=False,
                          disable=len(inputs) <= SHOWN_MEASUREMENTS or args.json):
        try:
            img = open_rgb(path)
        except DermalabError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        mask = seg.photo_masks([img])[0]
        entry = {"image": path, **measure_photo(img, mask).to_json()}
        if out is not None:
            target = out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask.astype(np.uint8) * 255).save(target)
            entry["mask"] = str(target)
        results.append(entry)
    if args.json:
        print(json.dumps(results))
    elif len(results) > SHOWN_MEASUREMENTS:
        print(f"{len(results)} images segmented" + (f", masks in {out}" if out else "")
              + "; --json gives every image's measurements")
    else:
        print("lesion measurements (descriptive, not diagnostic):")
        for r in results:
            print(f"{r['image']}: area {r['area_share']:.1%} of the image, diameter "
                  f"{r['diameter_px']:.0f} px, asymmetry {r['asymmetry_major']:.2f} / "
                  f"{r['asymmetry_minor']:.2f}, compactness {r['compactness']:.2f}, colours "
                  f"{', '.join(r['colours']) or '-'}")
    return 2 if failed else 0


def cmd_segment_export(args: argparse.Namespace) -> int:
    """``dermalab segment export RUN_DIR --format onnx``."""
    from dermalab.segment.predict import export_segmenter

    meta = export_segmenter(args.run_dir, args.out)
    par = meta["parity"]
    print(f"wrote {Path(args.out) if args.out else Path(args.run_dir) / 'export'}/model.onnx "
          f"(ONNX Runtime vs PyTorch: max abs diff {par['max_abs_diff']:.2e}, mask agreement "
          f"{par['mask_agreement']:.2%})")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    """``dermalab explain RUN_DIR [--images ... | --misclassified N]``."""
    from dermalab.evaluate.explain_run import explain_command

    out = explain_command(args.run_dir, images=args.images, misclassified=args.misclassified,
                          method=args.method, target_class=args.target_class, out_dir=args.out)
    print(f"wrote Grad-CAM overlays to {out}")
    return 0


def serve_models(paths: list[str], router: str | None
                 ) -> tuple[list[str], tuple[tuple[str, str], ...], str | None]:
    """The runs, image-type overrides and router of ``dermalab serve RUN_DIR...`` or of a
    models file (``serve models.yaml``: ``models: [{run: DIR, image_type: clinical}, ...]``,
    ``router: DIR``; relative paths are relative to the file)."""
    import yaml

    from dermalab.core.errors import ConfigError

    if len(paths) != 1 or not paths[0].endswith((".yaml", ".yml")):
        return paths, (), router
    file = Path(paths[0])
    if not file.is_file():
        raise ConfigError(f"{file}: no such models file")
    try:
        tree = yaml.safe_load(file.read_text("utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML ({exc})") from None
    models = tree.get("models") if isinstance(tree, dict) else None
    if not isinstance(models, list) or not models:
        raise ConfigError(f"{file}: needs `models:`, a list of {{run: DIR, image_type: "
                          "dermoscopic|clinical}}")
    runs, types = [], []
    for i, entry in enumerate(models, 1):
        if not isinstance(entry, dict) or not entry.get("run"):
            raise ConfigError(f"{file}: model {i} needs `run: RUN_DIR`")
        run = str((file.parent / str(entry["run"])).resolve())
        runs.append(run)
        if entry.get("image_type"):
            types.append((run, str(entry["image_type"])))
    if router is None and tree.get("router"):
        router = str((file.parent / str(tree["router"])).resolve())
    return runs, tuple(types), router


def cmd_serve(args: argparse.Namespace) -> int:
    """``dermalab serve RUN_DIR [RUN_DIR...] | MODELS.yaml``."""
    import uvicorn

    from dermalab.serve.app import create_app
    from dermalab.serve.service import ServeSettings, check_models

    runs, types, router = serve_models(args.run_dir, args.router)
    if args.clinics:
        from dermalab.serve.clinics import load_directory

        load_directory(args.clinics)
    hosts = tuple(args.allowed_host or ()) or ("127.0.0.1", "localhost", args.host)
    settings = ServeSettings(run_dir=runs[0], more_runs=tuple(runs[1:]), router=router,
                             image_types=types, database_url=args.db,
                             image_store=args.images, open=args.open, allowed_hosts=hosts,
                             docs=args.docs, retention_days=args.retention_days,
                             cookie_secure=args.secure_cookies, rate_signin=args.rate_signin,
                             rate_signin_failures=args.rate_signin_failures,
                             rate_upload=args.rate_upload, rate_storage=args.rate_storage,
                             clinics=args.clinics, orphan_grace_s=args.orphan_grace,
                             ondevice=args.ondevice,
                             int8_min_agreement=args.int8_min_agreement)
    check_models(settings)  # before announcing anything
    mode = ("OPEN mode: no accounts, every analysis visible to whoever uses it (single-user "
            "local install)" if args.open else "accounts: each person sees only their own "
            "analyses")
    app = create_app(settings)
    print(f"dermalab: serving {', '.join(runs)}{' routed by ' + router if router else ''} on "
          f"http://{args.host}:{args.port} (decision support, not a diagnosis); {mode}",
          flush=True)
    # The client address the rate limits key on: the TCP peer, unless a reverse proxy at one
    # of --forwarded-allow-ips passes it on (X-Forwarded-For from anyone else is ignored, or a
    # client could rotate it to escape every per-address limit).
    proxied = bool(args.forwarded_allow_ips)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", workers=1,
                proxy_headers=proxied,
                forwarded_allow_ips=args.forwarded_allow_ips if proxied else None)
    return 0


def cmd_router_fit(args: argparse.Namespace) -> int:
    """``dermalab router fit RUN_DIR... --out DIR``."""
    from dermalab.deploy.router_fit import fit_router_for_runs

    meta = fit_router_for_runs(args.run_dirs, args.out, per_run=args.per_run,
                               progress=not args.no_progress)
    val = meta.get("val")
    print(f"wrote the image-type router to {args.out} ({', '.join(meta['types'])}; fitted on "
          + ", ".join(f"{k}: {v}" for k, v in meta["fit_images"].items())
          + (f"; validation accuracy {val['accuracy']:.3f} on "
             + ", ".join(f"{k}: {v}" for k, v in val["images"].items() if v) if val else "")
          + ")")
    print(f"serve with: dermalab serve {' '.join(args.run_dirs)} --router {args.out}")
    return 0


class _Help(argparse.HelpFormatter):
    """Adds each option's default to its help where it has a meaningful one."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (action.option_strings and action.default not in (None, False, [])
                and action.default is not argparse.SUPPRESS and "default" not in text):
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    """Every command's parser uses :class:`_Help`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Help)
        super().__init__(*args, **kwargs)


def _add_export_parser(sub: Any, what: str, run_help: str,
                       func: Callable[[argparse.Namespace], int]) -> Any:
    """``export RUN_DIR [--format onnx] [--out DIR]`` (classifier and segmenter alike)."""
    exp = sub.add_parser("export", help=f"export {what} (ONNX + model.json)")
    exp.add_argument("run_dir", help=run_help)
    exp.add_argument("--format", default="onnx", choices=["onnx"], help="export format")
    exp.add_argument("--out", help="output folder (default RUN_DIR/export)")
    exp.set_defaults(func=func)
    return exp


def _add_data_parsers(sub: Any) -> None:
    """The parsers of dermalab data ...: list, download, inspect, push, pull."""
    data = sub.add_parser("data", help="dataset tools")
    dsub = data.add_subparsers(dest="data_command", required=True)
    insp = dsub.add_parser("inspect", help="class counts, sizes, bad files, duplicates, leaks")
    insp.add_argument("source", nargs="?", help="dataset path or name (dermalab data list); "
                      "default: the --config recipe's data.source or data.sources")
    insp.add_argument("--format", choices=["auto", "folder", "ham10000", "medmnist", "hmnist",
                                                "isic2019", "csv"],
                      help="dataset format (default: detected)")
    insp.add_argument("--split-out", help="write splits.csv, inspect.json and a bar chart here")
    insp.add_argument("--json", action="store_true", help="one JSON object on stdout")
    insp.add_argument("--config", "-c", help="YAML recipe whose data section to use (class "
                      "map, split ratios and seed, conflicts policy)")
    insp.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[],
                      metavar="KEY=VALUE", help="override config keys, e.g. "
                      "data.split_ratios=[0.7,0.15,0.15]")
    insp.add_argument("--split-file", help="check this external split (CSV of sample_id or "
                      "image_id, and split) instead of making one")
    insp.set_defaults(func=cmd_data_inspect)
    dl = dsub.add_parser("download", help="download a named dataset (verified, resumable)")
    dl.add_argument("name", help="dataset name (dermalab data list)")
    dl.add_argument("--to", help="folder for datasets (default $DERMALAB_DATA or "
                                 "~/.cache/dermalab/datasets)")
    dl.add_argument("--parts", nargs="+", help="parts to download (default: the dataset's "
                                              "default parts), e.g. --parts masks")
    dl.add_argument("--mirror", help="fetch <MIRROR>/<name>/<file> instead of the published "
                                     "URLs (checksums still apply); default $DERMALAB_MIRROR")
    dl.add_argument("--catalog", help="extra dataset catalog YAML (default $DERMALAB_CATALOG)")
    dl.add_argument("--no-progress", action="store_true", help="no progress bar")
    dl.set_defaults(func=cmd_data_download)
    ls = dsub.add_parser("list", help="named datasets: size, license, citation, parts, cached")
    ls.add_argument("--to", help="folder for datasets (default $DERMALAB_DATA)")
    ls.add_argument("--catalog", help="extra dataset catalog YAML (default $DERMALAB_CATALOG)")
    ls.add_argument("--json", action="store_true", help="JSON on stdout")
    ls.set_defaults(func=cmd_data_list)
    for name, func, first, second in (("push", cmd_data_push, "local", "uri"),
                                      ("pull", cmd_data_pull, "uri", "local")):
        sp = dsub.add_parser(name, help=f"{name} a folder {'to' if name == 'push' else 'from'} "
                                        "s3://bucket/prefix (checksummed, resumable)")
        helps = {"local": "local folder", "uri": "s3://bucket/prefix"}
        sp.add_argument(first, help=helps[first] + (" (source)" if name == "push" else
                                                    " (source)" if first == "uri" else ""))
        sp.add_argument(second, help=helps[second] + " (destination)")
        sp.add_argument("--endpoint-url", help="S3-compatible server (default "
                                               "$AWS_ENDPOINT_URL)")
        sp.add_argument("--workers", type=int, default=8, help="parallel transfers")
        sp.add_argument("--json", action="store_true", help="one JSON object on stdout")
        sp.set_defaults(func=func)


def _add_training_parsers(sub: Any) -> None:
    """The parsers of dermalab train, tune and compare."""
    train = sub.add_parser("train", help="fine-tune a backbone and evaluate it")
    _add_config_args(train)
    train.add_argument("--out", help="run directory (default runs/<name>-<time>)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run")
    train.add_argument("--redo-final", action="store_true", help="with --resume on a finished "
                       "run: redo its final evaluation, calibration and report")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    train.set_defaults(func=cmd_train)

    tn = sub.add_parser("tune", help="Bayesian hyperparameter search (Optuna TPE, pruning)")
    _add_config_args(tn)
    tn.add_argument("--search", required=True, help="search-space YAML (see configs/search_*)")
    tn.add_argument("--trials", type=int, required=True,
                    help="trials the study should hold, counted over all its workers")
    tn.add_argument("--out", required=True, help="study folder (trials, results, plots)")
    tn.add_argument("--storage", help="Optuna storage URL shared by workers, e.g. "
                    "postgresql+psycopg://user@host/db (default sqlite in --out)")
    tn.add_argument("--study", help="study name (default: the config's name)")
    tn.add_argument("--pruner", default="median", choices=["median", "hyperband", "none"],
                    help="stop hopeless trials early")
    tn.add_argument("--seed", type=int, help="sampler seed (leave unset with several workers)")
    tn.add_argument("--heartbeat", type=int, default=30, help="seconds between worker "
                    "heartbeats; a trial silent for twice this is retried")
    tn.add_argument("--no-progress", action="store_true", help="no progress bars")
    tn.set_defaults(func=cmd_tune)

    cp = sub.add_parser("compare", help="train several backbones with one recipe and split")
    _add_config_args(cp)
    cp.add_argument("--backbones", required=True,
                    help="comma-separated; 'name:scratch' trains from random weights")
    cp.add_argument("--out", required=True, help="comparison folder")
    cp.add_argument("--no-progress", action="store_true", help="no progress bars")
    cp.set_defaults(func=cmd_compare)


def _add_evaluation_parsers(sub: Any) -> None:
    """The parsers of dermalab evaluate, report, export, predict and explain."""
    ev = sub.add_parser("evaluate", help="evaluate a run's best checkpoint")
    ev.add_argument("run_dir", help="a run directory written by `dermalab train`")
    ev.add_argument("--data", help="another dataset with the same classes")
    ev.add_argument("--split", default="test", choices=["train", "val", "test", "all"],
                    help="which part of the split to evaluate")
    ev.add_argument("--tta", action="store_true", help="average over flip views")
    ev.add_argument("--json", action="store_true", help="one JSON object on stdout")
    ev.set_defaults(func=cmd_evaluate)

    rep = sub.add_parser("report", help="calibrate, analyse and write report.html for a run")
    rep.add_argument("run_dir", help="a finished run directory")
    rep.add_argument("--serving", action="store_true", help="also fit the web service's "
                     "'not skin' and 'not sure' detectors (when the run's eval.serving is off)")
    rep.add_argument("--set", nargs="+", metavar="KEY=VALUE", help="evaluation settings to "
                     "analyse with, kept in the run's config (eval.* only, e.g. "
                     "eval.malignant_classes=[mel,bcc])")
    rep.set_defaults(func=cmd_report)

    exp = _add_export_parser(sub, "the best model", "a finished run directory", cmd_export)
    exp.add_argument("--quantize", choices=["int8"], help="also write model.int8.onnx: static "
                     "INT8 quantisation calibrated on training images, checked against FP32 "
                     "on validation images (for on-device analysis on phones)")
    exp.add_argument("--activation-bits", type=int, choices=[16, 8], default=16,
                     help="with --quantize int8: activations as uint16 (default; closest to "
                     "FP32) or uint8 (integer kernels: faster in ONNX Runtime on a CPU, "
                     "a few points less agreement with FP32)")

    pr = sub.add_parser("predict", help="top-k calibrated classes for images")
    pr.add_argument("model", help="a run directory or an exported model (folder or .onnx)")
    pr.add_argument("images", nargs="+", help="image files (JPEG, PNG, ...)")
    pr.add_argument("--top-k", type=int, default=3, help="classes shown per image")
    pr.add_argument("--tta", action="store_true", help="average over flips")
    pr.add_argument("--masks", metavar="DIR", help="lesion masks for a model trained with "
                    "data.input other than raw (<stem>_segmentation.png, <stem>_mask.png or "
                    "<stem>.png); images without one are segmented by the model's segmenter")
    pr.add_argument("--age", type=float, help="the patient's age in years (for a model "
                    "fitted with eval.metadata; the same patient for every image)")
    pr.add_argument("--sex", help="the patient's sex (female, male), as --age")
    pr.add_argument("--site", help="the body site of the lesion(s) (e.g. back, face), as --age")
    pr.add_argument("--json", action="store_true", help="one JSON list on stdout")
    pr.set_defaults(func=cmd_predict)

    ex = sub.add_parser("explain", help="Grad-CAM heat-maps")
    ex.add_argument("run_dir", help="a finished run directory")
    group = ex.add_mutually_exclusive_group()
    group.add_argument("--images", nargs="+", help="image files to explain")
    group.add_argument("--misclassified", type=int, default=None, metavar="N",
                       help="the N worst-misclassified test images (default 12)")
    ex.add_argument("--method", default="gradcam", choices=["gradcam", "gradcam++"],
                    help="class-activation method")
    ex.add_argument("--class", dest="target_class", help="explain this class (default: the "
                    "predicted one)")
    ex.add_argument("--out", help="output folder (default RUN_DIR/explain)")
    ex.set_defaults(func=cmd_explain)


def _add_segment_parsers(sub: Any) -> None:
    """The parsers of dermalab segment train, predict and export."""
    sg = sub.add_parser("segment", help="lesion segmentation: train, predict, export")
    sgsub = sg.add_subparsers(dest="segment_command", required=True)
    sgt = sgsub.add_parser("train", help="train a U-Net on images with lesion masks "
                           "(data.masks)")
    _add_config_args(sgt)
    sgt.add_argument("--out", help="run directory (default runs/<name>-segment-<time>)")
    sgt.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run")
    sgt.add_argument("--no-progress", action="store_true", help="no progress bars")
    sgt.set_defaults(func=cmd_segment_train)
    sgp = sgsub.add_parser("predict", help="lesion masks and measurements for images")
    sgp.add_argument("run_dir", help="a segmentation run directory")
    sgp.add_argument("images", nargs="+", help="image files or folders of images")
    sgp.add_argument("--out", help="write each photo's mask here as <name>_mask.png, at the "
                     "photo's size (a folder's sub-folders mirrored): a data.masks folder")
    sgp.add_argument("--json", action="store_true", help="one JSON list on stdout")
    sgp.set_defaults(func=cmd_segment_predict)
    _add_export_parser(sgsub, "the segmenter", "a segmentation run directory",
                       cmd_segment_export)


def _add_serving_parsers(sub: Any) -> None:
    """The parsers of dermalab router fit and serve."""
    ro = sub.add_parser("router", help="the image-type router of a several-model service")
    rosub = ro.add_subparsers(dest="router_command", required=True)
    rof = rosub.add_parser("fit", help="fit which model answers a photo (dermoscopic / "
                           "clinical / not skin) from the runs' own images and non-skin photos")
    rof.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                     help="the runs to serve, one per image type (data.image_type)")
    rof.add_argument("--out", required=True, help="the router folder to write")
    rof.add_argument("--per-run", type=int, default=800, help="training images used per run")
    rof.add_argument("--no-progress", action="store_true", help="no progress bars")
    rof.set_defaults(func=cmd_router_fit)

    sv = sub.add_parser("serve", help="the web page and API for photo analysis")
    sv.add_argument("run_dir", nargs="+", metavar="RUN_DIR",
                    help="finished run directories (with serving thresholds), one per image "
                    "type, or a models file (models.yaml: see the README)")
    sv.add_argument("--router", metavar="DIR", help="image-type router (dermalab router fit); "
                    "needed to serve more than one model")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 makes "
                    "the page reachable from other machines)")
    sv.add_argument("--port", type=int, default=8000, help="port to listen on")
    sv.add_argument("--db", help="history database URL (default SQLite in RUN_DIR/serving; "
                                 "postgresql+psycopg://... for PostgreSQL)")
    sv.add_argument("--images", help="where uploads are kept: a folder or s3://bucket/prefix")
    sv.add_argument("--open", action="store_true", help="single-user local install: no "
                    "accounts, every analysis visible to whoever reaches the page")
    sv.add_argument("--allowed-host", action="append", metavar="NAME", help="Host header to "
                    "answer (repeat; default 127.0.0.1, localhost and --host)")
    sv.add_argument("--retention-days", type=int, metavar="N", help="delete analyses older "
                    "than N days with their photos (checked hourly)")
    sv.add_argument("--secure-cookies", action="store_true", help="served over HTTPS (e.g. "
                    "behind a proxy): a Secure __Host- session cookie and HSTS")
    sv.add_argument("--forwarded-allow-ips", metavar="IPS", help="the reverse proxy's "
                    "address(es), comma-separated: only they may say who the client is "
                    "(X-Forwarded-For); default: nobody, the TCP peer is the client")
    sv.add_argument("--rate-signin", default="10/minute", help="sign-in and sign-up attempts "
                    "allowed per client address, and per account from one address")
    sv.add_argument("--rate-signin-failures", default="100/hour", help="failed sign-ins "
                    "allowed per account from all addresses together (a cap on a brute force "
                    "spread over many addresses)")
    sv.add_argument("--rate-upload", default="30/minute", help="uploads allowed per person "
                    "and per client address")
    sv.add_argument("--rate-storage", default="memory://", help="where rate-limit counts "
                    "live; several servers behind one address need a shared one "
                    "(redis://HOST:6379)")
    sv.add_argument("--clinics", metavar="FILE", help="clinic directory (CSV or YAML; see "
                    "examples/clinics.example.yaml) for the dermatologist finder")
    sv.add_argument("--orphan-grace", type=float, metavar="S", help="at start-up, delete "
                    "analyses whose photo is missing once older than S seconds (default 0 "
                    "with the run's own database and photos, 600 with --db/--images, which "
                    "another server may be writing)")
    sv.add_argument("--no-ondevice", dest="ondevice", action="store_false", help="do not "
                    "offer analysis in the browser (on by default for models with an ONNX "
                    "export, when scripts/setup.sh has installed onnxruntime-web)")
    sv.add_argument("--int8-min-agreement", type=float, default=0.98, metavar="SHARE",
                    help="offer the page the INT8 model only when its top class agrees with "
                    "FP32's on this share of validation images (default 0.98)")
    sv.add_argument("--docs", action="store_true", help="serve /docs and /redoc (they load "
                    "Swagger UI from a CDN; development only)")
    sv.set_defaults(func=cmd_serve)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of all commands."""
    parser = argparse.ArgumentParser(
        prog="dermalab",
        description="Train, evaluate, explain and serve skin-disease image classifiers "
                    "(decision support, not a diagnosis).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    _add_data_parsers(sub)
    _add_training_parsers(sub)
    _add_evaluation_parsers(sub)
    _add_segment_parsers(sub)
    _add_serving_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dermalab`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except DermalabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `dermalab data list | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
