"""``dermalab data ...``: inspect, list, download, push and pull datasets."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from dermalab.cli.common import load_cfg
from dermalab.core.settings import settings


def cmd_data_inspect(args: argparse.Namespace) -> int:
    """``dermalab data inspect [SOURCE]``."""
    from dermalab.data.inspect import format_report, inspect_dataset, plot_split_counts

    cfg = load_cfg(args)
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


def add_data_parsers(sub: Any) -> None:
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
