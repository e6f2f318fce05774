"""``dermalab serve`` and ``dermalab router fit``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


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

    from dermalab.serve.app import create_app, one_thread_per_request
    from dermalab.serve.service import check_models
    from dermalab.serve.settings import ServeSettings

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
                             rate_upload=args.rate_upload, rate_device=args.rate_device,
                             rate_storage=args.rate_storage,
                             clinics=args.clinics, orphan_grace_s=args.orphan_grace,
                             ondevice=args.ondevice,
                             int8_min_agreement=args.int8_min_agreement,
                             second_opinion_below=(None if args.second_opinion_below is None
                                                   or args.second_opinion_below <= 0
                                                   else args.second_opinion_below))
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
    one_thread_per_request()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", workers=1,
                proxy_headers=proxied,
                forwarded_allow_ips=args.forwarded_allow_ips if proxied else None)
    return 0


def cmd_router_fit(args: argparse.Namespace) -> int:
    """``dermalab router fit RUN_DIR... --out DIR``."""
    from dermalab.deploy.router_fit import CLOSEUPS, fit_router_for_runs

    meta = fit_router_for_runs(args.run_dirs, args.out, per_run=args.per_run,
                               progress=not args.no_progress,
                               closeups=(() if args.closeups is None
                                         else args.closeups or CLOSEUPS))
    val = meta.get("val")
    print(f"wrote the image-type router to {args.out} ({', '.join(meta['types'])}; fitted on "
          + ", ".join(f"{k}: {v}" for k, v in meta["fit_images"].items())
          + (f"; validation accuracy {val['accuracy']:.3f} on "
             + ", ".join(f"{k}: {v}" for k, v in val["images"].items() if v) if val else "")
          + ")")
    if meta.get("val_closeup"):
        print(f"close-ups (centre crops {', '.join(map(str, meta['closeups']))} of the "
              f"validation photos): accuracy {meta['val_closeup']['accuracy']:.3f}")
    print(f"serve with: dermalab serve {' '.join(args.run_dirs)} --router {args.out}")
    return 0


def add_serving_parsers(sub: Any) -> None:
    """The parsers of dermalab router fit and serve."""
    ro = sub.add_parser("router", help="the image-type router of a several-model service")
    rosub = ro.add_subparsers(dest="router_command", required=True)
    rof = rosub.add_parser("fit", help="fit which model answers a photo (dermoscopic / "
                           "clinical / not skin) from the runs' own images and non-skin photos")
    rof.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                     help="the runs to serve, one per image type (data.image_type)")
    rof.add_argument("--out", required=True, help="the router folder to write")
    rof.add_argument("--per-run", type=int, default=800, help="training images used per run")
    rof.add_argument("--closeups", type=float, nargs="*", metavar="SHARE",
                     help="also learn centre crops of every photo (the share of each side "
                     "kept; with no value 0.5 0.33), so that more phone close-ups of a spot go "
                     "to the clinical model (see bench/results/closeups.md; default: off)")
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
    sv.add_argument("--rate-device", default="60/minute", help="private device sessions "
                    "(no account) started per client address; looser than sign-in, since "
                    "phones behind one carrier or Wi-Fi address share it")
    sv.add_argument("--rate-storage", default="memory://", help="where rate-limit counts "
                    "live; several servers behind one address need a shared one "
                    "(redis://HOST:6379)")
    sv.add_argument("--second-opinion-below", type=float, default=0.95, metavar="P",
                    help="with two models: when the router is less sure than P which kind of "
                    "photo it is, the other model checks for a possibly malignant lesion too "
                    "and can make the referral urgent (default %(default)s; 0: never)")
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
