"""Per skin type and source: the served answer per subgroup over several seeds, with pooled
intervals and the worst-to-best gap (shared by ``bench/quality.py`` and ``bench/clinical.py``).

Each group's metrics are computed on the group's test photos for every seed; the interval is
the pooled one (one resample of the group's test units applied to every seed's answers). The
gap is the best minus the worst group's seed-mean balanced accuracy (groups of at least
``GAP_MIN_SUPPORT`` photos, unknown left out), its interval from resamples of the whole split
with the two groups fixed.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np
from common import fmt, pm

from dermalab.core.config import load_config
from dermalab.core.decision import Decision
from dermalab.core.intervals import pooled_intervals
from dermalab.core.runs import Predictions, RunPaths, read_metrics
from dermalab.data.prepare import PreparedData, prepare_data
from dermalab.evaluate.analysis import (
    GAP_MIN_SUPPORT,
    gap_function,
    group_functions,
    subgroup_values,
)
from dermalab.evaluate.finalize import add_estimated_skin_types

#: The subgroup attributes of the skin-type table: labelled types (Fitzpatrick17k photos),
#: types estimated from healthy skin (every photo), and the source atlas.
ATTRIBUTES = {"skin_type": "Fitzpatrick type, labelled (Fitzpatrick17k photos only)",
              "skin_type_estimated": "Fitzpatrick type estimated from healthy skin (ITA), "
                                     "every test photo",
              "source": "source atlas"}
GROUP_METRICS = ("balanced_accuracy", "malignant_sensitivity", "malignant_specificity",
                 "malignant_auc")


def split_data(run: Path) -> PreparedData:
    """The run's data as it was split, from its config, ``metrics.json`` and ``splits.csv``
    (no weights: a kept run, ``common.keep_run``, serves)."""
    paths = RunPaths(run)
    cfg = load_config(str(paths.config), [])
    return prepare_data(cfg.data, int(read_metrics(paths)["image_size"]),
                        split_path=paths.splits, progress=False, write=False)


def answers(run: Path) -> tuple[Predictions, Decision, list[str]]:
    test = Predictions.load(run / "predictions_test.npz")
    d = Decision.from_json(json.loads((run / "decision.json").read_text())["decision"])
    return test, d, json.loads((run / "metrics.json").read_text())["classes"]


def subgroup_tables(runs: list[Path], reps: int = 1000) -> dict[str, Any]:
    """Per attribute and group, each served metric per seed and the pooled 95% interval of its
    seed-mean (one resample of the group's test units applied to every seed), and the gap
    between the worst and best group's balanced accuracy with its pooled interval."""
    data = split_data(runs[0])
    loaded_answers = [answers(r) for r in runs]
    ids = loaded_answers[0][0].ids
    if any(a[0].ids != ids for a in loaded_answers):
        raise SystemExit("the runs have different test splits")
    y = np.asarray(loaded_answers[0][0].targets)
    units = np.asarray(data.units(ids))
    rows = data.meta_rows(ids)
    add_estimated_skin_types(data, ids, rows)
    values = subgroup_values(rows)
    sources = [str(r.get("source") or "unknown") for r in rows]
    if any(v != "unknown" for v in sources):
        values["source"] = sources
    probs = [d.probabilities(t.logits) for t, d, _ in loaded_answers]
    mal = [d.malignant_indices(c) for _, d, c in loaded_answers]
    out: dict[str, Any] = {}
    for key in ATTRIBUTES:
        if key not in values:
            continue
        arr = np.asarray(values[key])
        groups: dict[str, Any] = {}
        for g in sorted(set(values[key])):
            sel = arr == g
            fns = [group_functions(y[sel], p[sel], d, m)
                   for p, (_, d, _), m in zip(probs, loaded_answers, mal, strict=True)]
            full = np.arange(int(sel.sum()))
            per_seed = {name: [f[name](full) for f in fns] for name in GROUP_METRICS}
            groups[g] = {"support": int(sel.sum()),
                         "malignant_support": int(np.isin(y[sel], mal[0]).sum()),
                         "per_seed": per_seed,
                         "pooled_ci": pooled_intervals(fns, list(units[sel]), y[sel], reps)}
        scored = {g: statistics.fmean(v["per_seed"]["balanced_accuracy"])
                  for g, v in groups.items()
                  if g != "unknown" and v["support"] >= GAP_MIN_SUPPORT}
        gap = None
        if len(scored) >= 2:
            worst, best = min(scored, key=scored.__getitem__), max(scored, key=scored.__getitem__)
            fn = [{"gap": gap_function(y, p, arr == best, arr == worst)} for p in probs]
            gap = {"worst": worst, "best": best, "difference": scored[best] - scored[worst],
                   "pooled_ci": pooled_intervals(fn, list(units), y, reps).get("gap")}
        out[key] = {"what": ATTRIBUTES[key], "groups": groups, "gap": gap}
    return out


def _cell(values: list[float | None], ci: list[float] | None) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "–"
    return (pm(vals) if len(vals) > 1 else fmt(vals[0])) + \
        (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def subgroup_markdown(tables: dict[str, Any], target_gap: float | None, malignant: str
                      ) -> list[str]:
    """The per-group tables; ``malignant`` names the classes behind the urgent referral."""
    md = ["## Per skin type and source (test, served answer)", "",
          f"Mean ± sd over seeds [pooled 95% interval]. Malignant = {malignant} (the urgent "
          "referral). The gap is the best minus the worst group's balanced accuracy (groups "
          f"of at least {GAP_MIN_SUPPORT} photos, unknown left out)"
          + (f", target <= {target_gap}." if target_gap is not None else "."), ""]
    for block in tables.values():
        md += [f"### {block['what']}", "",
               "| group | photos | malignant | bal. acc | malignant sens | malignant spec | "
               "malignant AUC |", "|" + " --- |" * 7]
        for g, v in block["groups"].items():
            cells = [_cell(v["per_seed"][m], v["pooled_ci"].get(m)) for m in GROUP_METRICS]
            md.append(f"| {g} | {v['support']} | {v['malignant_support']} | "
                      + " | ".join(cells) + " |")
        gap = block["gap"]
        if gap:
            ci = gap["pooled_ci"]
            md += ["", f"Gap: {gap['worst']} vs {gap['best']}: **{gap['difference']:.3f}**"
                   + (f" [pooled 95% {ci[0]:.3f}, {ci[1]:.3f}]" if ci else "") + "."]
        md.append("")
    return md


