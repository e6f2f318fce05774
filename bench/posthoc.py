"""Benchmark: what can be gained after training, on the one-model default recipe's finished
seeds (``bench/quality.py --recipe one-model``; the default was one model until 2026-12-01,
and trains such pairs of seeds as ``model.members: 2`` since), without training anything.
Nothing here is chosen on test: weights, temperatures and thresholds are fitted on validation,
test is only measured.

- **Ensembles of seeds**: the mean of the members' temperature-scaled logits, the temperature
  refitted on validation, with and without the patient metadata (the fusion weight refitted on
  validation). Every pair and the triple. Balanced accuracy of the plain and of the
  logit-adjusted argmax (tau on validation): the default's logit-adjusted loss leaves posterior
  logits, whose balanced decision is the adjusted one.
- **Metadata model variants**: the shipped logistic regression (``C = 0.3``), a weaker-prior one
  (``C = 3``), one with all pairwise products of the encoded features, and gradient-boosted
  trees; each trained on the same train rows with every subset of fields hidden.
- **The "not sure" line with metadata**: test coverage and accuracy of the accepted answers
  for the image alone, for fused answers judged by the image's threshold, and for fused
  answers judged by the threshold fitted on fused validation answers (what the service uses).
- **How the logit adjustment's tau is fitted** (``argmax z - tau log pi``, Menon et al. 2021):
  the shipped grid search for the best validation balanced accuracy, against the tau that
  minimises the validation *balanced* NLL (each class's mean NLL, averaged over classes: the
  smooth objective the adjustment's balanced error is the 0-1 form of). Judged first on
  validation alone, by repeated lesion-grouped halving of it (fit on one half, score the
  other), then measured on test; on every MobileNetV2 run of ``bench/quality.py`` here.
- **Flip TTA under the shipped decision rule**: the same per-run study with the logits
  averaged over the four flip views (``dermalab evaluate --tta``; the temperature refitted on
  validation), image alone and with metadata, against the plain logits: does averaging the
  views add to the metadata and the logit adjustment? The views' logits are computed once per
  run and kept in its directory (``tta_logits.npz``).

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
from common import HAM, WORK, finished_runs, fmt, machine, mean_sd, pm, write_results
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.preprocessing import PolynomialFeatures

from dermalab.core.calibration import calibrated_probs, fit_temperature, nll, selective_threshold
from dermalab.core.metadata import MetadataModel
from dermalab.core.runs import Predictions, load_run
from dermalab.data.prepare import prepare_data
from dermalab.evaluate.metadata_fusion import _hidden, fit_metadata_model, fit_weight
from dermalab.train.accel import make_accelerator
from dermalab.train.loop import predict_split

# The post-hoc logit adjustment this study compared (evaluate/analysis.py until 2026-12-07;
# the served decision, core.decision, has since replaced it).
TAUS = np.round(np.arange(-1.0, 3.0001, 0.1), 2) + 0.0  # + 0.0: no "-0.0" in reports


def adjusted_argmax(logits: np.ndarray, prior: np.ndarray, tau: float) -> np.ndarray:
    """Post-hoc logit adjustment (Menon et al., "Long-tail learning via logit adjustment",
    ICLR 2021): ``argmax_y f_y(x) - tau log pi_y`` with ``pi`` the training class prior.

    With ``f`` the log-posterior under the training prior, ``tau = 1`` is the Bayes decision
    for balanced error (each class weighted equally); a model trained with a re-balancing
    loss or sampler has already moved part of the way, so ``tau`` is fitted on validation.
    A decision rule only: probabilities are unchanged.
    """
    return np.asarray((logits - tau * np.log(prior)[None, :]).argmax(axis=1))


def logit_adjustment(val: Predictions, test: Predictions, prior: np.ndarray) -> dict[str, Any]:
    """``tau`` in [-1, 3] (steps of 0.1) that maximises validation balanced accuracy (ties:
    the smallest ``|tau|``), and test accuracy / balanced accuracy with and without it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # classes missing from a small validation split
        scores = [balanced_accuracy_score(val.targets, adjusted_argmax(val.logits, prior, t))
                  for t in TAUS]
        best = max(range(len(TAUS)), key=lambda i: (round(scores[i], 12), -abs(TAUS[i])))
        tau = float(TAUS[best])
        plain, adjusted = test.logits.argmax(1), adjusted_argmax(test.logits, prior, tau)
        return {
            "tau": tau,
            "val_balanced_accuracy": float(scores[best]),
            "val_balanced_accuracy_without": float(scores[int(np.flatnonzero(TAUS == 0)[0])]),
            "balanced_accuracy": float(balanced_accuracy_score(test.targets, adjusted)),
            "balanced_accuracy_without": float(balanced_accuracy_score(test.targets, plain)),
            "accuracy": float(np.mean(adjusted == test.targets)),
            "accuracy_without": float(np.mean(plain == test.targets)),
        }


FIELDS = ["age", "sex", "localization"]
SEEDS = (1, 42, 7)
TARGET_ACCURACY = 0.85  # eval.uncertain_target_accuracy of the default
#: The MobileNetV2 recipes of bench/quality.py whose runs the tau study reads (where present).
TAU_RECIPES = ("one-model", "px160-mobilenetv2", "px160-auc", "ep28", "freeze0",
               "oversample", "cb-focal")
#: Random lesion-grouped halvings of validation for the validation-only comparison.
HALVINGS = 100


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


def adjusted(vz: np.ndarray, tz: np.ndarray, vy: np.ndarray, ty: np.ndarray,
             prior: np.ndarray) -> float:
    """Test balanced accuracy of the logit-adjusted argmax, tau by the shipped grid on
    validation (the default's balanced decision: its logits are posterior logits)."""
    return float(balanced_accuracy_score(ty, adjusted_argmax(tz, prior,
                                                             tau_by_grid(vz, vy, prior))))


def ensembles(runs: dict[int, dict[str, Any]], vr: np.ndarray, tr: np.ndarray,
              prior: np.ndarray) -> list[dict[str, Any]]:
    """Every combination of the seeds: image alone and with metadata."""
    vy, ty = runs[SEEDS[0]]["val"]["targets"], runs[SEEDS[0]]["test"]["targets"]
    out = []
    for k in range(1, len(runs) + 1):
        for combo in itertools.combinations(sorted(runs), k):
            vz = np.mean([runs[s]["val"]["logits"] / runs[s]["T"] for s in combo], 0)
            tz = np.mean([runs[s]["test"]["logits"] / runs[s]["T"] for s in combo], 0)
            t = fit_temperature(vz, vy)
            vz, tz = vz / t, tz / t
            vf, tf, w = fused(vz, tz, vr, tr, vy)
            out.append({"seeds": list(combo), "members": k, "temperature": t, "weight": w,
                        "adjusted_balanced_accuracy": adjusted(vz, tz, vy, ty, prior),
                        "metadata_adjusted_balanced_accuracy": adjusted(vf, tf, vy, ty, prior),
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


def balanced_nll(logits: np.ndarray, targets: np.ndarray) -> float:
    """``-(1/K) sum_k mean_{i: y_i = k} log softmax(z_i)_k`` over the classes present: the
    log loss with every class weighted equally (the proper-scoring counterpart of balanced
    accuracy)."""
    lp = log_softmax(logits, axis=1)[np.arange(len(targets)), targets]
    return float(-np.mean([lp[targets == k].mean() for k in np.unique(targets)]))


def tau_by_grid(logits: np.ndarray, targets: np.ndarray, prior: np.ndarray) -> float:
    """The shipped rule (``evaluate.analysis.logit_adjustment``), here on temperature-scaled
    logits as the metadata fusion applies it (the image-alone report uses the raw logits: the
    same rule on a grid of tau scaled by T)."""
    p = Predictions(np.arange(len(targets)), targets, logits)
    return float(logit_adjustment(p, p, prior)["tau"])


def tau_by_balanced_nll(logits: np.ndarray, targets: np.ndarray, prior: np.ndarray) -> float:
    """The tau in the grid's range minimising the balanced NLL of ``z - tau log pi``."""
    lo, hi = float(TAUS[0]), float(TAUS[-1])
    return float(minimize_scalar(lambda t: balanced_nll(logits - t * np.log(prior), targets),
                                 bounds=(lo, hi), method="bounded").x)


SHIPPED = "grid on balanced accuracy (shipped)"
TAU_RULES = {SHIPPED: tau_by_grid, "balanced NLL": tau_by_balanced_nll}


def tau_study(run: dict[str, Any], base: MetadataModel, meta: dict[str, dict[str, Any]],
              lesions: dict[str, str], seed: int,
              rules: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], float]]
              ) -> list[dict[str, Any]]:
    """For one run, image alone and with metadata (``base``, fitted on the run's training
    split): each of ``rules``' validation balanced accuracy on held-out halves (mean over
    :data:`HALVINGS` lesion-grouped halvings) and its test balanced accuracy when fitted on all
    of validation."""
    prior = np.exp(np.asarray(base.log_prior))
    val_ids, test_ids = run["val"]["ids"], run["test"]["ids"]
    vy, ty = run["val"]["targets"], run["test"]["targets"]
    vz, tz = run["val"]["logits"] / run["T"], run["test"]["logits"] / run["T"]
    vf, tf, _ = fused(vz, tz, base.log_ratio([meta[i] for i in val_ids]),
                      base.log_ratio([meta[i] for i in test_ids]), vy)
    groups = np.array([lesions[i] for i in val_ids])
    unique = np.unique(groups)
    rng = np.random.default_rng(seed)
    halves = [np.isin(groups, rng.choice(unique, len(unique) // 2, replace=False))
              for _ in range(HALVINGS)]
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a class can be missing from a half
        for inputs, v, t in (("image", vz, tz), ("image + metadata", vf, tf)):
            row: dict[str, Any] = {"inputs": inputs,
                                   "test_plain": float(balanced_accuracy_score(ty, t.argmax(1)))}
            for rule, fit in rules.items():
                held = [balanced_accuracy_score(vy[~a], adjusted_argmax(
                    v[~a], prior, fit(v[a], vy[a], prior))) for a in halves]
                tau = fit(v, vy, prior)
                row[rule] = {"tau": tau, "val_halves": float(np.mean(held)),
                             "test": float(balanced_accuracy_score(
                                 ty, adjusted_argmax(t, prior, tau)))}
            out.append(row)
    return out


def with_tta(d: Path, run: dict[str, Any]) -> dict[str, Any]:
    """``run`` with its validation and test logits replaced by the mean over the flip views
    of its best weights, the temperature refitted on them (computed once, then read from
    ``d / "tta_logits.npz"``)."""
    cache = d / "tta_logits.npz"
    if not cache.is_file():
        loaded = load_run(d, command="evaluate")
        cfg = loaded.config
        data = prepare_data(cfg.data, loaded.info.image_size, split_path=loaded.paths.splits,
                            progress=False)
        acc = make_accelerator(cfg.train)
        model = acc.prepare(loaded.model)
        views = {}
        for sp in ("val", "test"):
            p = predict_split(model, data, sp, loaded.info.classes, loaded.info.mean,
                              loaded.info.std, acc, batch_size=cfg.train.eval_batch_size,
                              tta=True)
            assert (p.ids == run[sp]["ids"]).all() and p.tta_logits is not None, (d, sp)
            # The plain pass must reproduce the saved predictions: same weights, same images.
            np.testing.assert_allclose(p.logits, run[sp]["logits"], rtol=1e-3, atol=1e-3)
            views[sp] = p.tta_logits
        np.savez(cache, **views)
    z = np.load(cache)
    out = {sp: {"ids": run[sp]["ids"], "targets": run[sp]["targets"], "logits": z[sp]}
           for sp in ("val", "test")}
    return {**run, **out, "T": fit_temperature(z["val"], run["val"]["targets"])}


def main() -> None:
    started = time.time()
    ham = list(csv.DictReader((HAM / "HAM10000_metadata.csv").open()))
    meta = {r["image_id"]: {k: r[k] for k in FIELDS} for r in ham}
    runs = {s: load_seed(WORK / "quality" / "one-model" / f"s{s}") for s in SEEDS}
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
    prior = np.exp(np.asarray(base.log_prior))

    per_seed: list[dict[str, Any]] = []
    lines: list[dict[str, Any]] = []
    for s, r in runs.items():
        vz, tz = r["val"]["logits"] / r["T"], r["test"]["logits"] / r["T"]
        for name, f in evidence.items():
            vf, tf, w = fused(vz, tz, f(vrows), f(trows), vy)
            per_seed.append({"seed": s, "variant": name, "weight": w,
                             "adjusted_balanced_accuracy": adjusted(vf, tf, vy, ty, prior),
                             "val_nll": nll(vf, vy), "test_nll": nll(tf, ty), **scores(ty, tf)})
        vf, tf, _ = fused(vz, tz, vr, tr, vy)
        lines += [{"seed": s, **row} for row in not_sure(ty, vy, vz, tz, vf, tf)]
    ens = ensembles(runs, vr, tr, prior)
    lesions = {r["image_id"]: r["lesion_id"] for r in ham}
    finished = sorted(((recipe, int(d.name[1:]), d) for recipe, d in
                       finished_runs(WORK / "quality", dict.fromkeys(TAU_RECIPES))),
                      key=lambda x: (TAU_RECIPES.index(x[0]), x[1]))
    taus, ttas = [], []
    for recipe, seed, d in finished:
        run = load_seed(d)
        # one split for every recipe (data.split_seed), so the metadata model fitted above
        # on its training rows serves them all
        assert run["train"] == first["train"] and run["classes"] == classes, d
        plain = [{"recipe": recipe, "seed": seed, **row}
                 for row in tau_study(run, base, meta, lesions, seed, TAU_RULES)]
        taus += plain
        # The same halvings (same seed), so each TTA row pairs with its plain row; only the
        # shipped rule is compared.
        for p, row in zip(plain, tau_study(with_tta(d, run), base, meta, lesions, seed,
                                           {SHIPPED: TAU_RULES[SHIPPED]}), strict=True):
            ttas.append({"recipe": recipe, "seed": seed, "inputs": row["inputs"],
                         "plain": {"test_argmax": p["test_plain"], **p[SHIPPED]},
                         "tta": {"test_argmax": row["test_plain"], **row[SHIPPED]}})

    report = {"benchmark": "posthoc", "date": time.strftime("%Y-%m-%d"), "machine": machine(),
              "seeds": list(SEEDS), "test_images": len(ty), "ensembles": ens,
              "metadata_variants": per_seed, "not_sure": lines, "tau_rules": taus,
              "tta": ttas,
              "minutes": (time.time() - started) / 60}

    md = [f"# After training: ensembles, metadata models, the \"not sure\" line "
          f"({report['date']})", "",
          "On the one-model default recipe's seeds " + ", ".join(map(str, SEEDS))
          + f" (`bench/work/quality/one-model`), lesion-grouped HAM10000 split, test n = "
          f"{len(ty)}. Everything is fitted on validation; test is only measured. "
          "`python bench/posthoc.py`.", "",
          "## Ensembles of seeds (mean of temperature-scaled logits)", "",
          "| members | combinations | bal. acc | logit-adjusted bal. acc | AUC | + metadata: "
          "bal. acc | + metadata: logit-adjusted bal. acc | + metadata: AUC |",
          "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for k in range(1, len(SEEDS) + 1):
        rows = [e for e in ens if e["members"] == k]
        md.append(f"| {k} | {', '.join('+'.join(map(str, e['seeds'])) for e in rows)} | "
                  f"{pm([e['balanced_accuracy'] for e in rows])} | "
                  f"{pm([e['adjusted_balanced_accuracy'] for e in rows])} | "
                  f"{pm([e['roc_auc_macro'] for e in rows])} | "
                  f"{pm([e['metadata_balanced_accuracy'] for e in rows])} | "
                  f"{pm([e['metadata_adjusted_balanced_accuracy'] for e in rows])} | "
                  f"{pm([e['metadata_roc_auc_macro'] for e in rows], 4)} |")
    md += ["", "## Metadata model variants (per seed, then mean ± sd)", "",
           "| metadata model | val NLL | test NLL | bal. acc per seed | bal. acc | "
           "logit-adjusted bal. acc | AUC |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for name in evidence:
        rows = [p for p in per_seed if p["variant"] == name]
        md.append(f"| {name} | {pm([p['val_nll'] for p in rows], 4)} | "
                  f"{pm([p['test_nll'] for p in rows], 4)} | "
                  f"{' / '.join(fmt(p['balanced_accuracy']) for p in rows)} | "
                  f"{pm([p['balanced_accuracy'] for p in rows])} | "
                  f"{pm([p['adjusted_balanced_accuracy'] for p in rows])} | "
                  f"{pm([p['roc_auc_macro'] for p in rows], 4)} |")
    md += ["", f"## The \"not sure\" line (target accuracy {TARGET_ACCURACY} on validation)", "",
           "| rule | threshold | test coverage | accuracy of accepted answers |",
           "| --- | --- | --- | --- |"]
    for rule in dict.fromkeys(x["rule"] for x in lines):
        rows = [x for x in lines if x["rule"] == rule]
        md.append(f"| {rule} | {pm([x['threshold'] for x in rows])} | "
                  f"{pm([x['coverage'] for x in rows])} | "
                  f"{pm([x['accepted_accuracy'] for x in rows])} |")
    md += ["", "## How the logit adjustment's tau is fitted", "",
           f"Per run: balanced accuracy of each rule on held-out halves of validation (mean over "
           f"{HALVINGS} lesion-grouped halvings, the rule fitted on the other half), then on "
           "test with tau fitted on all of validation. Without adjustment: plain argmax.", "",
           "| run | inputs | plain: test | " + " | ".join(
               f"{rule}: tau / val halves / test" for rule in TAU_RULES) + " |",
           "| --- | --- | --- | " + " | ".join("---" for _ in TAU_RULES) + " |"]
    for x in taus:
        md.append(f"| {x['recipe']} s{x['seed']} | {x['inputs']} | {fmt(x['test_plain'])} | "
                  + " | ".join(f"{x[r]['tau']:.2f} / {fmt(x[r]['val_halves'])} / "
                               f"{fmt(x[r]['test'])}" for r in TAU_RULES) + " |")
    for inputs in ("image", "image + metadata"):
        rows = [x for x in taus if x["inputs"] == inputs]
        md.append(f"| **mean ± sd ({len(rows)} runs)** | {inputs} | "
                  f"{pm([x['test_plain'] for x in rows])} | "
                  + " | ".join(f"{pm([x[r]['tau'] for x in rows], 2)} / "
                               f"{pm([x[r]['val_halves'] for x in rows])} / "
                               f"{pm([x[r]['test'] for x in rows])}" for r in TAU_RULES) + " |")
    shipped, smooth = SHIPPED, next(r for r in TAU_RULES if r != SHIPPED)
    for inputs in ("image", "image + metadata"):
        rows = [x for x in taus if x["inputs"] == inputs]
        gain = {k: pm([x[smooth][k] - x[shipped][k] for x in rows]) for k in
                ("val_halves", "test")}
        md += ["", f"{inputs}: the balanced-NLL rule minus the shipped one (mean ± sd over "
               f"runs): {gain['val_halves']} on validation halves, {gain['test']} on test."]
    md += ["", "## Flip TTA under the shipped decision rule", "",
           "Per run: the logits of the four flip views averaged (temperature refitted on "
           "validation) against the plain logits; the logit adjustment's tau fitted by the "
           "shipped grid. Val halves: as above, the same halvings for both.", "",
           "| run | inputs | plain: argmax test / val halves / test | "
           "TTA: argmax test / val halves / test |", "| --- | --- | --- | --- |"]
    for x in ttas:
        md.append(f"| {x['recipe']} s{x['seed']} | {x['inputs']} | " + " | ".join(
            f"{fmt(x[k]['test_argmax'])} / {fmt(x[k]['val_halves'])} / {fmt(x[k]['test'])}"
            for k in ("plain", "tta")) + " |")
    for inputs in ("image", "image + metadata"):
        rows = [x for x in ttas if x["inputs"] == inputs]
        md.append(f"| **TTA minus plain ({len(rows)} runs)** | {inputs} | | " + " / ".join(
            pm([x["tta"][k] - x["plain"][k] for x in rows])
            for k in ("test_argmax", "val_halves", "test")) + " |")
    mean, _ = mean_sd([e["metadata_adjusted_balanced_accuracy"] for e in ens
                       if e["members"] == 2])
    md += ["", f"A pair of seeds with metadata: mean logit-adjusted balanced accuracy {mean:.3f}. "
           f"Runtime {report['minutes']:.1f} min."]
    write_results("posthoc", report, md)


if __name__ == "__main__":
    main()
