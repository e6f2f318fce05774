"""``dermalab explain``: Grad-CAM overlays for chosen images or the worst test mistakes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dermalab.core.errors import DermalabError
from dermalab.core.runs import load_run
from dermalab.data.images import load_resized
from dermalab.data.prepare import prepare_data
from dermalab.evaluate.finalize import saved_predictions
from dermalab.evaluate.gallery import mistakes, render_gallery


def explain_command(
    run_dir: str | Path,
    *,
    images: list[str] | None = None,
    misclassified: int | None = None,
    method: str = "gradcam",
    target_class: str | None = None,
    out_dir: str | Path | None = None,
) -> Path:
    """Write ``<name>_<method>.png`` overlays (image | heat-map), ``gallery.png`` and
    ``explain.json`` into ``out_dir`` (default ``RUN_DIR/explain``).

    Without ``images``, explains the ``misclassified`` (default 12) test images the model got
    wrong most confidently. ``target_class`` explains that class instead of the predicted one.
    """
    run = load_run(run_dir, command="explain")
    info = run.info
    if target_class is not None and target_class not in info.classes:
        raise DermalabError(f"unknown class {target_class!r}; the model knows {info.classes}")
    names: list[str]
    truths: list[str | None]
    if images:
        arrays = np.stack([load_resized(p, info.image_size, info.resize_mode) for p in images])
        names, truths = [Path(p).stem for p in images], [None] * len(images)
    else:
        data = prepare_data(run.config.data, info.image_size, split_path=run.paths.splits)
        arrays, names, truths = mistakes(run, data, saved_predictions(run, data, "test"),
                                         misclassified or 12)
        if not names:
            raise DermalabError("the model made no mistakes on the test split")
    out = Path(out_dir) if out_dir else run.paths.explain
    out.mkdir(parents=True, exist_ok=True)
    entries = render_gallery(run, arrays, names, truths, out / "gallery.png", method=method,
                             target_class=target_class, size=max(224, info.image_size),
                             per_image_dir=out)
    (out / "explain.json").write_text(json.dumps({"method": method, "images": entries},
                                                 indent=2))
    return out
