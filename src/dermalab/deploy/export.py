"""Export a run's best model to ONNX (dynamic batch) with a ``model.json`` describing it.

The exported model is checked against PyTorch on the spot (max abs difference of logits and
argmax agreement) and the result is recorded in ``model.json``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dermalab.core.atomic import atomic_path, atomic_write_text
from dermalab.core.errors import DermalabError
from dermalab.core.models import FeaturesAndLogits
from dermalab.core.runs import SEGMENTER_DIR, load_run
from dermalab.data.images import normalize_batch

OPSET = 17


def export_onnx(run_dir: str | Path, out_dir: str | Path | None = None,
                check_images: np.ndarray | None = None) -> dict[str, Any]:
    """Write ``model.onnx`` and ``model.json`` (default ``RUN_DIR/export``).

    Args:
        run_dir: a training run.
        out_dir: where to write.
        check_images: ``(N, S, S, 3)`` uint8 images for the parity check (random if ``None``).

    Returns:
        the ``model.json`` content, with ``parity`` = {max_abs_diff, argmax_agreement, n}.
    """
    import onnxruntime as ort

    run = load_run(run_dir, command="export")
    out = Path(out_dir) if out_dir else run.paths.export
    out.mkdir(parents=True, exist_ok=True)
    model = run.model.eval()  # dropout/BN in eval mode: the classic cause of mismatches
    info = run.info
    s = info.image_size
    example = torch.randn(2, info.in_chans, s, s)
    onnx_path = out / "model.onnx"
    both = FeaturesAndLogits(model).eval()
    with atomic_path(onnx_path) as tmp:
        torch.onnx.export(both, (example,), str(tmp), dynamo=False, opset_version=OPSET,
                          input_names=["image"],
                          output_names=["logits", "features", "feature_map"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"},
                                        "features": {0: "batch"}, "feature_map": {0: "batch"}})

    if check_images is None:
        rng = np.random.default_rng(0)
        check_images = rng.integers(0, 256, (4, s, s, 3), dtype=np.uint8)
        if info.in_chans == 4:  # a lesion-mask channel: 0 or 255
            check_images = np.concatenate(
                [check_images, rng.integers(0, 2, (4, s, s, 1), dtype=np.uint8) * 255], axis=3)
    x = torch.from_numpy(normalize_batch(check_images, info.mean, info.std))
    with torch.no_grad():
        ref = model(x).numpy()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"image": x.numpy()})[0]
    parity = {"max_abs_diff": float(np.abs(got - ref).max()),
              "argmax_agreement": float(np.mean(got.argmax(1) == ref.argmax(1))),
              "n": len(check_images)}
    info.extra = {"opset": OPSET, "input": "image",
                  "outputs": ["logits", "features", "feature_map"],
                  "layout": "NCHW",
                  "source_run": str(run.paths.root.resolve()), "parity": parity}
    seg = run.paths.root / SEGMENTER_DIR
    if seg.is_dir():  # the lesion segmenter travels with the model that needs it
        shutil.copytree(seg, out / SEGMENTER_DIR, dirs_exist_ok=True)
    meta = info.to_json()
    atomic_write_text(out / "model.json", json.dumps(meta, indent=2))
    return meta


#: ``dermalab export --format NAME``: each format's exporter, ``(run_dir, out_dir) ->
#: model.json content``. A new format is a function beside :func:`export_onnx` and its entry.
EXPORTERS: dict[str, Callable[..., dict[str, Any]]] = {"onnx": export_onnx}


def export_run(run_dir: str | Path, out_dir: str | Path | None = None,
               fmt: str = "onnx") -> dict[str, Any]:
    """Export a finished run in format ``fmt`` (:data:`EXPORTERS`).

    Raises:
        DermalabError: an unknown format (the message lists the known ones).
    """
    if fmt not in EXPORTERS:
        raise DermalabError(f"unknown export format {fmt!r}; known: {', '.join(EXPORTERS)}")
    return EXPORTERS[fmt](run_dir, out_dir)
