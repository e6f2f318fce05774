"""Benchmark: how well the Individual Typology Angle estimates the Fitzpatrick skin type.

``eval.skin_tone`` reports subgroups by skin type estimated from healthy skin
(``dermalab.data.skin_tone``) for data without skin-type labels. This measures the estimate
against the labelled Fitzpatrick17k subset (types I-VI by the dataset's annotators): exact
agreement, within one type, agreement of the three groups (I-II, III-IV, V-VI), Cohen's kappa
(quadratic weights) and the confusion of the groups. Photos are read as the pipeline caches
them (128 px, squashed).

    .venv/bin/python bench/skin_tone.py
"""

from __future__ import annotations

import csv
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, machine, write_results
from sklearn.metrics import cohen_kappa_score

from dermalab.core.skin import skin_type_group
from dermalab.data.images import load_resized
from dermalab.data.skin_tone import fitzpatrick_from_ita, ita

FITZ = SHARED / "fitzpatrick17k_subset"
GROUPS = ("I-II", "III-IV", "V-VI")


def main() -> None:
    with open(FITZ / "fitzpatrick17k_subset.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["fitzpatrick_scale"] not in ("-1", "")]
    truth, est, no_skin = [], [], 0
    for r in rows:
        t = fitzpatrick_from_ita(ita(load_resized(str(FITZ / "images" / f"{r['md5hash']}.jpg"),
                                                  128, "squash")))
        if t is None:
            no_skin += 1
            continue
        truth.append(int(r["fitzpatrick_scale"]))
        est.append(t)
    y, e = np.array(truth), np.array(est)
    gy = [skin_type_group(v) for v in y]
    ge = [skin_type_group(v) for v in e]
    confusion = {a: {b: int(sum(1 for p, q in zip(gy, ge, strict=True) if p == a and q == b))
                     for b in GROUPS} for a in GROUPS}
    report = {"machine": machine(), "labelled": len(rows), "estimated": len(y),
              "too_little_skin": no_skin,
              "exact": float(np.mean(y == e)), "within_one": float(np.mean(np.abs(y - e) <= 1)),
              "group_agreement": float(np.mean(np.array(gy) == np.array(ge))),
              "kappa_quadratic": float(cohen_kappa_score(y, e, weights="quadratic")),
              "labelled_groups": dict(Counter(gy)), "estimated_groups": dict(Counter(ge)),
              "group_confusion": confusion}
    md = ["# Skin type estimated from healthy skin (ITA) vs Fitzpatrick17k labels", "",
          f"{report['estimated']} of {report['labelled']} labelled photos estimated "
          f"({no_skin} had too little visible skin). Exact type {report['exact']:.3f}, within "
          f"one type {report['within_one']:.3f}, group (I-II / III-IV / V-VI) "
          f"{report['group_agreement']:.3f}, quadratic-weighted kappa "
          f"{report['kappa_quadratic']:.3f}.", "",
          "| labelled \\ estimated | " + " | ".join(GROUPS) + " |", "|---|---|---|---|"]
    md += [f"| {a} | " + " | ".join(str(confusion[a][b]) for b in GROUPS) + " |"
           for a in GROUPS]
    md += ["", "The estimate depends on lighting and camera as much as on skin; subgroup "
           "tables label it \"estimated\" and the labelled types take precedence where a "
           "dataset has them."]
    write_results("skin_tone", report, md)


if __name__ == "__main__":
    main()
