"""``dermalab explain``: Grad-CAM overlays for chosen images or the worst test mistakes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from dermalab import plots
from dermalab.calibration import calibrated_probs
from dermalab.data.images import load_resized
from dermalab.engine.evaluate import load_run
from dermalab.errors import DermalabError


def explain_command(
    run_dir: str | Path,
    *,
    images: list[str] | None = None,
    misclassified: int | None = None,
    method: str = "gradcam",
    target_class: str | None = None,
    out_dir: str | Path | None = None,
) -> Path:
    """Write ``<name>.png`` overlays (image | heat-map) and ``gallery.png`` into ``out_dir``.

    Without ``images``, explains the ``misclassified`` (default 12) test images the model got
    wrong most confidently. ``target_class`` explains that class instead of the predicted one.
    """
    from dermalab.engine.finalize import _predictions, worst_mistakes
    from dermalab.explain import cam_maps, overlay

    run_dir = Path(run_dir)
    run = load_run(run_dir)
    info = run.info
    out = Path(out_dir) if out_dir else run_dir / "explain"
    out.mkdir(parents=True, exist_ok=True)
    t = info.temperature
    if target_class is not None and target_class not in info.classes:
        raise DermalabError(f"unknown class {target_class!r}; the model knows {info.classes}")
    names: list[str]
    truths: list[str | None]
    if images:
        arrays = np.stack([load_resized(p, info.image_size, info.resize_mode) for p in images])
        names, truths = [Path(p).stem for p in images], [None] * len(images)
    else:
        from dermalab.data.prepare import prepare_data

        data = prepare_data(run.config.data, info.image_size, split_path=run_dir / "splits.csv")
        test = _predictions(run, data, "test", run_dir)
        probs = calibrated_probs(test.logits, t)
        idx = worst_mistakes(test, probs, misclassified or 12)
        if not idx:
            raise DermalabError("the model made no mistakes on the test split")
        arrays = np.stack([data.store.get(test.ids[i]) for i in idx])
        names = [test.ids[i].replace("/", "_") for i in idx]
        truths = [info.classes[test.targets[i]] for i in idx]
    chosen = [info.classes.index(target_class)] * len(arrays) if target_class else None
    maps, logits = cam_maps(run.model, info.backbone, arrays, info.mean, info.std, chosen, method)
    assert logits is not None
    probs = calibrated_probs(logits, t)
    shown, titles, entries = [], [], []
    for j, name in enumerate(names):
        k = chosen[j] if chosen else int(probs[j].argmax())
        ov = overlay(arrays[j], maps[j], size=max(224, info.image_size))
        orig = np.asarray(Image.fromarray(arrays[j]).resize(ov.shape[:2][::-1]))
        Image.fromarray(np.concatenate([orig, ov], axis=1)).save(out / f"{name}_{method}.png")
        pred = info.classes[int(probs[j].argmax())]
        title = f"{name[-24:]}\npred {pred} ({probs[j].max():.2f}); map: {info.classes[k]}"
        if truths[j]:
            title = f"{name[-24:]}\ntrue {truths[j]} / pred {pred} ({probs[j].max():.2f})"
        shown.append(ov)
        titles.append(title)
        entries.append({"image": name, "true": truths[j], "pred": pred,
                        "probability": float(probs[j].max()), "explained_class": info.classes[k],
                        "file": f"{name}_{method}.png"})
    plots.save(plots.image_grid(shown, titles), str(out / "gallery.png"))
    (out / "explain.json").write_text(json.dumps({"method": method, "images": entries},
                                                 indent=2))
    return out
