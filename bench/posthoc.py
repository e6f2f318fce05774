"""Benchmark: what can be gained after training, on the default recipe's finished seeds
(``bench/quality.py --recipe default``), without training anything. Nothing here is chosen on
test: weights, temperatures and thresholds are fitted on validation, test is only measured.

- **Ensembles of seeds**: the mean of the members' temperature-scaled logits, the temperature
  refitted on validation, with and without the patient metadata (the fusion weight refitted on
  validation). Every pair and the triple; a pair costs two trainings (~40 min on 2 CPUs).
- **Metadata model variants**: the shipped logistic regression (``C = 0.3``), a weaker-prior one
  (``C = 3``), one with all pairwise products of the encoded features, and gradient-boosted
  trees; each trained on the same train rows with every subset of fields hidden.
- **The "not sure" line with metadata**: test coverage and accuracy of the accepted answers
  for the image alone, for fused answers judged by the image's threshold, and for fused
  answers judged by the threshold fitted on fused validation answers (what the service uses).

Writes ``bench/results/posthoc.{json,md}``. Usage: ``python bench/posthoc.py``
"""

from __future__ import annotations

import csv
import itertools
import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from common import HAM, WORK, fmt, machine, mean_sd, pm, write_results
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.preprocessing import PolynomialFeatures

from dermalab.core.calibration import calibrated_probs, fit_temperature, nll
from dermalab.core.metadata import MetadataModel
from dermalab.deploy.ood import selective_threshold
from dermalab.evaluate.metadata_fusion import _hidden, fit_metadata_model, fit_weight

FIELDS = ["age", "sex", "localization"]
SEEDS = (1, 42, 7)
TARGET_ACCURACY = 0.85  # eval.uncertain_target_accuracy of the default


def load_seed(run: Path) -> dict[str, Any]:
    """A finished run's validation/test logits, temperature, classes and training rows."""
    m = json.loads((run / "metrics.json").read_text())
    splits = list(csv.DictReader((run / "splits.csv").open()))
    return {"val": np.load(run / "predictions_val.npz"),
            "test": np.load(run / "predictions_test.npz"),
            "T": m["temperature"], "classes": m["classes"],
            "train": [(r["sample_id"], r["label"]) for r in splits if r["split"] == "train"]}


def scores(targets: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """Balanced accuracy (argmax) and macro one-vs-rest AUC, checked by scikit-learn."""
    return {"balanced_accuracy": float(balanced_accuracy_score(targets, logits.argmax(1))),
            "roc_auc_macro": float(roc_auc_score(targets, calibrated_probs(logits),
                                                 multi_class="ovr"))}


def fused(vz: np.ndarray, tz: np.ndarray, vr: np.ndarray, tr: np.ndarray, vy: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray, float]:
    """Validation and test logits fused with the metadata evidence at the weight fitted on
    validation NLL (as ``evaluate/metadata_fusion.py``)."""
    w = fit_weight(vz, vr, vy)
    return vz + w * vr, tz + w * tr, w


def ensembles(runs: dict[int, dict[str, Any]], vr: np.ndarray, tr: np.ndarray
              ) -> list[dict[str, Any]]:
    """Every combination of the seeds: image alone and with metadata."""
    vy, ty = runs[SEEDS[0]]["val"]["targets"], runs[SEEDS[0]]["test"]["targets"]
    out = []
    for k in range(1, len(runs) + 1):
        for combo in itertools.combinations(sorted(runs), k):
            vz = np.mean([runs[s]["val"]["logits"] / runs[s]["T"] for s in combo], 0)
            tz = np.mean([runs[s]["test"]["logits"] / runs[s]["T"] for s in combo], 0)
            t = fit_temperature(vz, vy)
            vz, tz = vz / t, tz / t
            _, tf, w = fused(vz, tz, vr, tr, vy)
            out.append({"seeds": list(combo), "members": k, "temperature": t, "weight": w,
                        **scores(ty, tz),
                        **{"metadata_" + key: v for key, v in scores(ty, tf).items()}})
    return out


def variants(base: MetadataModel, train_rows: list[dict[str, Any]], ytr: np.ndarray
             ) -> dict[str, Callable[[list[dict[str, Any]]], np.ndarray]]:
    """Metadata evidence ``log p(y|m) - log pi`` of each model variant."""
    subsets = [s for k in range(len(FIELDS) + 1) for s in itertools.combinations(FIELDS, k)]
    x = np.vstack([base.encode([_hidden(r, s) for r in train_rows]) for s in subsets])
    y = np.tile(ytr, len(subsets))
    log_prior = np.asarray(base.log_prior)
    strong = fit_metadata_model(train_rows, ytr, len(log_prior), FIELDS, c=3.0)
    poly = PolynomialFeatures(2, interaction_only=True, include_bias=False).fit(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lbfgs' convergence chatter on separable one-hots
        inter = LogisticRegression(C=0.3, max_iter=3000).fit(poly.transform(x), y)
    trees = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, max_leaf_nodes=15,
                                           l2_regularization=1.0, random_state=0).fit(x, y)
    return {
        "logistic regression, C = 0.3 (shipped)": base.log_ratio,
        "logistic regression, C = 3": strong.log_ratio,
        "+ pairwise interactions, C = 0.3": lambda rows: inter.predict_log_proba(
            poly.transform(base.encode(rows))) - log_prior,
        "gradient-boosted trees": lambda rows: np.log(np.clip(
            trees.predict_proba(base.encode(rows)), 1e-6, 1)) - log_prior,
    }


def not_sure(ty: np.ndarray, vy: np.ndarray, vz: np.ndarray, tz: np.ndarray, vf: np.ndarray,
             tf: np.ndarray) -> list[dict[str, Any]]:
    """Coverage and accuracy of the accepted test answers under each "not sure" line."""
    def line(v: np.ndarray) -> float:
        p = calibrated_probs(v)
        return selective_threshold(p.max(1), p.argmax(1) == vy, TARGET_ACCURACY)

    out = []
    for name, test_logits, t in (("image alone, image line", tz, line(vz)),
                                 ("with metadata, image line", tf, line(vz)),
                                 ("with metadata, fused line (served)", tf, line(vf))):
        p = calibrated_probs(test_logits)
        kept = p.max(1) >= t
        out.append({"rule": name, "threshold": t, "coverage": float(kept.mean()),
                    "accepted_accuracy": float((p.argmax(1) == ty)[kept].mean())})
    return out


def main() -> None:
    started = time.time()
    meta = {r["image_id"]: {k: r[k] for k in FIELDS}
            for r in csv.DictReader((HAM / "HAM10000_metadata.csv").open())}
    runs = {s: load_seed(WORK / "quality" / "default" / f"s{s}") for s in SEEDS}
    first = runs[SEEDS[0]]
    classes = first["classes"]
    for r in runs.values():  # one split for all seeds (data.split_seed), so members align
        assert (r["val"]["ids"] == first["val"]["ids"]).all()
        assert (r["test"]["ids"] == first["test"]["ids"]).all() and r["classes"] == classes
    train_rows = [meta[i] for i, _ in first["train"]]
    ytr = np.array([classes.index(label) for _, label in first["train"]])
    vrows, trows = [meta[i] for i in first["val"]["ids"]], [meta[i] for i in first["test"]["ids"]]
    vy, ty = first["val"]["targets"], first["test"]["targets"]
    base = fit_metadata_model(train_rows, ytr, len(classes), FIELDS)
    evidence = variants(base, train_rows, ytr)
    vr, tr = base.log_ratio(vrows), base.log_ratio(trows)

    per_seed: list[dict[str, Any]] = []
    lines: list[dict[str, Any]] = []
    for s, r in runs.items():
        vz, tz = r["val"]["logits"] / r["T"], r["test"]["logits"] / r["T"]
        for name, f in evidence.items():
            vf, tf, w = fused(vz, tz, f(vrows), f(trows), vy)
            per_seed.append({"seed": s, "variant": name, "weight": w,
                             "val_nll": nll(vf, vy), "test_nll": nll(tf, ty), **scores(ty, tf)})
        vf, tf, _ = fused(vz, tz, vr, tr, vy)
        lines += [{"seed": s, **row} for row in not_sure(ty, vy, vz, tz, vf, tf)]
    ens = ensembles(runs, vr, tr)

    report = {"benchmark": "posthoc", "date": time.strftime("%Y-%m-%d"), "machine": machine(),
              "seeds": list(SEEDS), "test_images": len(ty), "ensembles": ens,
              "metadata_variants": per_seed, "not_sure": lines,
              "minutes": (time.time() - started) / 60}

    md = [f"# After training: ensembles, metadata models, the \"not sure\" line "
          f"({report['date']})", "",
          "On the default recipe's seeds " + ", ".join(map(str, SEEDS)) + " (`bench/work/quality/"
          f"default`), lesion-grouped HAM10000 split, test n = {len(ty)}. Everything is fitted "
          "on validation; test is only measured. `python bench/posthoc.py`.", "",
          "## Ensembles of seeds (mean of temperature-scaled logits)", "",
          "| members | combinations | bal. acc | AUC | + metadata: bal. acc | + metadata: AUC |",
          "| --- | --- | --- | --- | --- | --- |"]
    for k in range(1, len(SEEDS) + 1):
        rows = [e for e in ens if e["members"] == k]
        md.append(f"| {k} | {', '.join('+'.join(map(str, e['seeds'])) for e in rows)} | "
                  f"{pm([e['balanced_accuracy'] for e in rows])} | "
                  f"{pm([e['roc_auc_macro'] for e in rows])} | "
                  f"{pm([e['metadata_balanced_accuracy'] for e in rows])} | "
                  f"{pm([e['metadata_roc_auc_macro'] for e in rows], 4)} |")
    md += ["", "## Metadata model variants (per seed, then mean ± sd)", "",
           "| metadata model | val NLL | test NLL | bal. acc per seed | bal. acc | AUC |",
           "| --- | --- | --- | --- | --- | --- |"]
    for name in evidence:
        rows = [p for p in per_seed if p["variant"] == name]
        md.append(f"| {name} | {pm([p['val_nll'] for p in rows], 4)} | "
                  f"{pm([p['test_nll'] for p in rows], 4)} | "
                  f"{' / '.join(fmt(p['balanced_accuracy']) for p in rows)} | "
                  f"{pm([p['balanced_accuracy'] for p in rows])} | "
                  f"{pm([p['roc_auc_macro'] for p in rows], 4)} |")
    md += ["", f"## The \"not sure\" line (target accuracy {TARGET_ACCURACY} on validation)", "",
           "| rule | threshold | test coverage | accuracy of accepted answers |",
           "| --- | --- | --- | --- |"]
    for rule in dict.fromkeys(x["rule"] for x in lines):
        rows = [x for x in lines if x["rule"] == rule]
        md.append(f"| {rule} | {pm([x['threshold'] for x in rows])} | "
                  f"{pm([x['coverage'] for x in rows])} | "
                  f"{pm([x['accepted_accuracy'] for x in rows])} |")
    mean, _ = mean_sd([e["metadata_balanced_accuracy"] for e in ens if e["members"] == 2])
    md += ["", f"A pair of seeds with metadata: mean balanced accuracy {mean:.3f}. "
           f"Runtime {report['minutes']:.1f} min."]
    write_results("posthoc", report, md)


if __name__ == "__main__":
    main()
