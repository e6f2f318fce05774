"""The page's on-device analysis (``static/ondevice/core.js``) against the Python it mirrors.

Python computes each function's output on fixed inputs and writes them to a cases file; Node's
test runner (``tests/js/core.test.mjs``) runs the JavaScript on the same inputs and compares.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dermalab.core.calibration import calibrated_probs
from dermalab.core.i18n import LANGUAGES, t
from dermalab.core.metadata import MetadataModel
from dermalab.data.images import normalize_batch, resize_rgb
from dermalab.deploy.ood import MahalanobisOOD, colour_statistics
from dermalab.deploy.router import predict_proba, router_input
from dermalab.evaluate.explain import cam_from_feature_map
from dermalab.serve.answer import (
    decide,
    is_not_skin,
    percent,
    routed_type,
    second_opinion_type,
    unserved_type,
    wording,
)

ROOT = Path(__file__).resolve().parents[2]


def _image(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A photo-like test image: smooth gradients plus noise (pure noise would hide filter
    errors less well than edges do)."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 255 / max(w - 1, 1)), (yy * 255 / max(h - 1, 1)),
                     ((xx + yy) % 37) * 7], axis=2)
    return np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)


def _metadata_case(rng: np.random.Generator) -> dict:
    from dermalab.core.metadata import MetadataModel

    mm = MetadataModel(fields=["age", "sex", "localization"], sexes=["female", "male"],
                       sites=["back", "face", "lower extremity"], coef=[], intercept=[],
                       log_prior=np.log([0.1, 0.2, 0.3, 0.4]).tolist(), weight=0.6)
    mm.coef = rng.normal(size=(4, len(mm.feature_names()))).tolist()
    mm.intercept = rng.normal(size=4).tolist()
    rows = [{"age": "61", "sex": "male", "localization": "face"},
            {"age": 30, "localization": "Lower Extremity"},  # 30 opens a band
            {"age": 29.5, "sex": "unknown"}, {"age": 75}, {"age": 44.9, "sex": "female"},
            {"localization": "elbow"},  # not a site the model knows: missing
            {"age": 55, "age_missing": True}, {}]
    logits = rng.normal(0, 2, (len(rows), 4))
    fused = calibrated_probs(np.vstack([mm.fuse(logits[i:i + 1] / 1.3, [r])
                                        for i, r in enumerate(rows)]))
    return {"model": mm.to_json(), "rows": rows, "logits": logits.tolist(),
            "temperature": 1.3, "expected": fused.tolist(),
            "given": [mm.given(r) for r in rows]}


def _served_case(rng: np.random.Generator) -> dict:
    """The served decision (core.decision) with a prior shift and a metadata model: the page's
    ``servedProbabilities`` against :meth:`Decision.probabilities`."""
    from dermalab.core.decision import Decision

    case = _metadata_case(rng)
    mm = MetadataModel.from_json(case["model"])
    decision = Decision(temperature=1.3, tau=0.7, log_prior=mm.log_prior)
    logits = np.asarray(case["logits"])
    expected = []
    for i, row in enumerate(case["rows"]):
        used = bool(mm.given(row))  # the page weighs a row only when it gives a field
        expected.append(decision.probabilities(logits[i:i + 1], mm if used else None,
                                               [row] if used else None)[0].tolist())
    bundle = {"temperature": 1.3, "shift": decision.shift(4).tolist(), "metadata": case["model"]}
    return {"bundle": bundle, "rows": case["rows"], "logits": case["logits"],
            "expected": expected, "plain": decision.probabilities(logits).tolist()}


def _resize_cases(rng: np.random.Generator) -> list[dict]:
    cases = []
    for w, h, size, mode in [(200, 150, 128, "squash"), (200, 150, 192, "squash"),
                             (37, 53, 96, "pad"), (300, 200, 64, "crop"),
                             (50, 40, 96, "squash"), (64, 64, 64, "squash"),
                             (1200, 900, 96, "squash"), (999, 1333, 128, "pad")]:
        img = _image(rng, w, h)
        out = np.asarray(resize_rgb(Image.fromarray(img), size, mode), np.uint8)
        cases.append({"w": w, "h": h, "size": size, "mode": mode,
                      "input": img.ravel().tolist(), "expected": out.ravel().tolist()})
    return cases


def _mahalanobis_case(rng: np.random.Generator) -> dict:
    k, d = 4, 24
    a = rng.normal(size=(d, d))
    precision = (a @ a.T / d + np.eye(d)).astype(np.float32)
    means = rng.normal(size=(k, d)).astype(np.float32)
    feats = rng.normal(size=(5, d)).astype(np.float32)
    ood = MahalanobisOOD(means.astype(np.float64), precision.astype(np.float64), 0.0)
    return {"k": k, "d": d, "means": means.ravel().tolist(),
            "precision": precision.ravel().tolist(), "features": feats.tolist(),
            "expected": ood.score(feats.astype(np.float64)).tolist()}


def _decide_cases(rng: np.random.Generator) -> list[dict]:
    classes = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    urgency = {"akiec": "urgent", "bcc": "urgent", "bkl": "routine", "df": "self-care",
               "mel": "urgent", "nv": "self-care", "vasc": "routine"}
    bundle = {"classes": classes, "top_k": 3, "uncertain_threshold": 0.55,
              "ood": {"threshold": 100.0}, "colour": {"threshold": 50.0},
              "malignant": {"classes": ["mel", "bcc", "akiec"], "threshold": 0.3}}
    cases = []
    for i in range(40):
        logits = rng.normal(0, 2.5, len(classes))
        probs = calibrated_probs(logits[None], 1.3)[0]
        ood, colour = float(rng.uniform(0, 130)), float(rng.uniform(0, 65))
        not_skin = ood > 100.0 or colour > 50.0
        mal_p = float(probs[[classes.index(c) for c in ("mel", "bcc", "akiec")]].sum())
        mal_t = 0.3 if i % 5 else None  # some without an operating point
        b = {**bundle, "malignant": {**bundle["malignant"], "threshold": mal_t}}
        # every third case the clinical model was asked as well, urgent every other time
        second = ({"model": "c", "image_type": "clinical", "malignant_probability": 0.41,
                   "malignant_threshold": 0.2, "urgent": i % 2 == 0} if i % 3 == 0 else None)
        verdict, referral, order = decide(probs, not_skin, 0.55, 3, mal_p, mal_t, urgency,
                                          classes, bool(second and second["urgent"]))
        texts = {}
        for lang in LANGUAGES:
            top = (f"name-{classes[order[0]]}", float(probs[order[0]]))
            texts[lang] = list(wording(verdict, referral, None if not_skin else top, mal_p,
                                       mal_t, lang, second))
        cases.append({"bundle": b, "probs": probs.tolist(), "ood": ood, "colour": colour,
                      "urgency": urgency, "verdict": verdict, "referral": referral,
                      "order": order if not not_skin else [], "texts": texts,
                      "second": second})
    return cases


def _router_cases(rng: np.random.Generator) -> dict:
    """The router's input (Pillow BILINEAR, no block reduction), its logistic regression on
    embedding + colour statistics, the served-type choice and the "not skin" rule."""
    resize = []
    for w, h, size in [(200, 150, 128), (1200, 900, 128), (37, 53, 128), (640, 480, 64),
                       (128, 128, 128)]:
        img = _image(rng, w, h)
        resize.append({"w": w, "h": h, "size": size, "input": img.ravel().tolist(),
                       "expected": router_input(img, size).ravel().tolist()})
    d_emb, types = 12, ["dermoscopic", "clinical", "not_skin"]
    emb = rng.normal(size=(6, d_emb))
    colour = rng.normal(3, 2, size=(6, 23))
    shift = rng.normal(size=d_emb + 23)
    scale = rng.uniform(0.5, 3, size=d_emb + 23)
    coef = rng.normal(size=(len(types), d_emb + 23))
    intercept = rng.normal(size=len(types))
    probs = predict_proba(np.concatenate([emb, colour], axis=1), shift, scale, coef, intercept)
    choose = []
    for p in [*probs, np.array([0.4, 0.4, 0.2]), np.array([0.1, 0.3, 0.6])]:
        pd = dict(zip(types, map(float, p), strict=True))
        for served in (["dermoscopic", "clinical"], ["clinical", "dermoscopic"], ["clinical"]):
            choose.append({"served": served, "probabilities": pd,
                           "expected": routed_type(served, pd),
                           "unserved": unserved_type(served, pd, "router")})
    # both answers occur: a type no served model knows, and none
    assert {c["unserved"] is None for c in choose} == {True, False}
    second = []
    for p in [*probs[:3], np.array([0.45, 0.5, 0.05]), np.array([0.1, 0.3, 0.6])]:
        pd = dict(zip(types, map(float, p), strict=True))
        for served in (["dermoscopic", "clinical"], ["clinical"]):
            for by in ("router", "user"):
                for line in (None, 0.6, 0.9, 1.01):
                    kind = "not_skin" if p.argmax() == 2 else routed_type(served, pd)
                    routing = {"image_type": kind, "chosen_by": by, "probabilities": pd,
                               "unserved": unserved_type(served, pd, by)}
                    second.append({"served": served, "routing": routing, "line": line,
                                   "expected": second_opinion_type(served, routing, line)})
    assert {c["expected"] is None for c in second} == {True, False}
    rules = [{"routed": r, "detectors": dt, "model_detectors": md,
              "expected": is_not_skin(r, dt, md)}
             for r in (None, False, True) for dt in (False, True) for md in (False, True)]
    return {"resize": resize, "route": {
        "embedding": emb.tolist(), "colour": colour.tolist(), "shift": shift.tolist(),
        "scale": scale.tolist(), "coef": coef.ravel().tolist(), "intercept": intercept.tolist(),
        "expected": probs.tolist()}, "choose": choose, "rules": rules, "second": second}


def _messages() -> dict:
    keys = ["verdict.ok", "verdict.uncertain", "verdict.ok_malignant",
            "verdict.uncertain_malignant", "verdict.not_skin", "referral.not_skin",
            "referral.malignant", "referral.uncertain", "referral.urgent", "referral.routine",
            "referral.self-care", "disclaimer", "condition.no_description",
            "condition.no_care", "condition.no_see_doctor", "routing.ondevice",
            "model.dermoscopic", "model.clinical", "image_type.clinical", "verdict.ok_second",
            "verdict.uncertain_second", "referral.second_opinion", "routing.second"]
    from dermalab.core.i18n import catalogue

    return {lang: {k: catalogue()[k].get(lang) or catalogue()[k]["en"] for k in keys}
            for lang in LANGUAGES}


def make_cases() -> dict:
    rng = np.random.default_rng(7)
    colour_imgs = [_image(rng, 40, 30), np.zeros((20, 20, 3), np.uint8),
                   rng.integers(0, 256, (33, 17, 3), dtype=np.uint8)]
    norm_img = _image(rng, 16, 16)
    fmap = rng.normal(size=(1, 6, 4, 5)).astype(np.float32)
    weight = rng.normal(size=(3, 6)).astype(np.float32)
    logits = rng.normal(0, 3, (4, 7))
    return {
        "resize": _resize_cases(rng),
        "normalize": {"input": norm_img.ravel().tolist(), "size": 16,
                      "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                      "expected": normalize_batch(norm_img[None], [0.485, 0.456, 0.406],
                                                  [0.229, 0.224, 0.225])[0].ravel().tolist()},
        "softmax": {"logits": logits.tolist(), "temperature": 1.7,
                    "expected": calibrated_probs(logits, 1.7).tolist()},
        "mahalanobis": _mahalanobis_case(rng),
        "metadata": _metadata_case(rng),
        "served": _served_case(rng),
        "colour": [{"input": im.ravel().tolist(),
                    "expected": colour_statistics(im[None])[0].tolist()} for im in colour_imgs],
        "cam": {"fmap": fmap.ravel().tolist(), "c": 6, "h": 4, "w": 5,
                "weight": weight.tolist(), "size": 20,
                "expected": [cam_from_feature_map(fmap, weight, [k], 20)[0].ravel().tolist()
                             for k in range(3)]},
        "percent": [[p, percent(p)] for p in (0.0, 0.004, 0.125, 0.135, 0.5, 0.8149, 0.995,
                                               1.0, 0.305)],
        "decide": _decide_cases(rng),
        "router": _router_cases(rng),
        "messages": _messages(),
        "referral_check": t("referral.routine", "en"),
    }


def test_the_page_computes_what_the_server_computes(tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is needed for the page's JavaScript tests (.ci/run installs it)")
    cases = tmp_path / "cases.json"
    cases.write_text(json.dumps(make_cases()))
    proc = subprocess.run([node, "--test", str(ROOT / "tests" / "js" / "core.test.mjs")],
                          env={"DERMALAB_JS_CASES": str(cases), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "# fail 0" in proc.stdout and "# pass 0" not in proc.stdout
