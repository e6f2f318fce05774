"""``dermalab segment train|predict|export``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from dermalab.cli.common import add_config_args, add_export_parser, load_cfg
from dermalab.core.errors import DermalabError


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
        cfg = load_cfg(args)
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

    if args.format != "onnx":
        raise DermalabError(f"unknown segmenter export format {args.format!r}; known: onnx")
    meta = export_segmenter(args.run_dir, args.out)
    par = meta["parity"]
    print(f"wrote {Path(args.out) if args.out else Path(args.run_dir) / 'export'}/model.onnx "
          f"(ONNX Runtime vs PyTorch: max abs diff {par['max_abs_diff']:.2e}, mask agreement "
          f"{par['mask_agreement']:.2%})")
    return 0


def add_segment_parsers(sub: Any) -> None:
    """The parsers of dermalab segment train, predict and export."""
    sg = sub.add_parser("segment", help="lesion segmentation: train, predict, export")
    sgsub = sg.add_subparsers(dest="segment_command", required=True)
    sgt = sgsub.add_parser("train", help="train a U-Net on images with lesion masks "
                           "(data.masks)")
    add_config_args(sgt)
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
    add_export_parser(sgsub, "the segmenter", "a segmentation run directory",
                       cmd_segment_export)
