"""What a ``dermalab serve`` process is configured with (its command-line options)."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class ServeSettings:
    """Service configuration."""

    run_dir: str  # the first model; its serving/ folder holds the default database and photos
    more_runs: tuple[str, ...] = ()  # further models, one per image type
    router: str | None = None  # a `dermalab router fit` folder: which model answers a photo
    # run folder -> image type, overriding what the run says (a models file's `image_type:`)
    image_types: tuple[tuple[str, str], ...] = ()
    # With a router, its "not skin" class decides alone by default: it was fitted on both skin
    # types and on non-skin photos, while each model's own detectors know one type only and
    # their false alarms add up (bench/app_models.py measures both ways). True: either says.
    model_detectors: bool = False
    # when the router picks a skin model with a probability below this, the model of the
    # other kind of photo checks for a possibly malignant lesion too (None: never); chosen by
    # bench/closeups.py on validation close-ups
    second_opinion_below: float | None = 0.95
    database_url: str | None = None  # default sqlite:///<run_dir>/serving/history.db
    image_store: str | None = None  # folder or s3://bucket/prefix; default <run_dir>/serving/
    max_upload_bytes: int = 15 * 1024 * 1024
    max_pixels: int = 40_000_000
    decode_side: int = 1024  # large JPEGs are decoded at a reduced scale still this big
    min_side: int = 32
    top_k: int = 3
    heatmap_size: int = 224
    cam_workers: int = min(4, os.cpu_count() or 1)  # concurrent Grad-CAMs (model replicas)
    fast_cam: bool = True  # closed-form Grad-CAM at the last feature map where it is exact
    open: bool = False  # single-user local install: no accounts, every analysis visible
    allowed_hosts: tuple[str, ...] = ("127.0.0.1", "localhost", "testserver")
    docs: bool = False  # /docs and /redoc (they load scripts the CSP forbids): development only
    retention_days: int | None = None  # delete analyses older than this, with their photos
    cookie_secure: bool = False  # Secure cookies: set when served over HTTPS
    # sign-in attempts per client address, and per account from one address
    rate_signin: str = "10/minute"
    # failed sign-ins per account from all addresses together: a cap on a brute force spread
    # over many addresses, high enough that failures from strangers' addresses do not lock
    # the owner out at the per-address rate
    rate_signin_failures: str = "100/hour"
    rate_upload: str = "30/minute"  # per owner and per client address
    # private device sessions per client address: looser than sign-in, since many phones can
    # share one address (a carrier's NAT, a clinic's Wi-Fi) and a device session guesses
    # nothing; still a cap on filling the session table from one address
    rate_device: str = "60/minute"
    rate_storage: str = "memory://"  # limits storage URI; shared (redis://...) across processes
    clinics: str | None = None  # a clinic directory (CSV or YAML) for the dermatologist finder
    orphan_grace_s: float | None = None  # None: 0 with the run's own stores, else 600 s
    ondevice: bool = True  # offer analysis in the browser for models that can run there
    # the INT8 model is offered to the page above this validation top-1 agreement with FP32
    # (bench/ondevice.py sets 0 to measure INT8 in the browser whatever its agreement)
    int8_min_agreement: float = 0.98
    ort_dir: str | None = None  # onnxruntime-web's dist folder; default: the checkout's npm one
