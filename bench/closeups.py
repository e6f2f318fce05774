"""Benchmark: phone close-ups of a spot in the two-model app. Which model answers them, and how
many malignant ones get "see a dermatologist soon"?

No smartphone close-ups are in ``../shared/data``; the stand-ins are centre crops (each side
x 1.0, 0.5, 0.33) of the clinical run's held-out photos (DermNet NZ + Fitzpatrick17k), which
fill the frame with the spot as a phone held near the skin does. Beside them, the
dermoscopic run's held-out photos (whole and a 0.5 crop) check that dermoscopy still goes to
the dermoscopy model and that no rule buys sensitivity with false urgent referrals there.

Two routers, fitted from the same training photos of the same two runs
(:func:`dermalab.deploy.router_fit.fit_router_for_runs`): ``plain`` on whole frames (the
router before close-up views), ``closeup`` with the centre crops of
:data:`dermalab.deploy.router_fit.CLOSEUPS` too. Each router's share of held-out non-skin
photos flagged is measured beside (a close-up router must not let more through).

Rules for the referral (every piece from the service: ``ImageRouter.route``,
``service.second_opinion`` (a model's own referral for a photo alone: ``ServedModel.assess``
and ``answer.decide``), ``answer.routed_type``, ``answer.is_not_skin``,
``answer.second_opinion_type``):

- ``routed``: the answer of the model the router picks (what ``dermalab serve`` does);
- ``both<L``: when the router's probability for the type it picks is below ``L``, the other
  model is asked too and the referral is urgent when either model's answer is (the
  service's ``second_opinion_below``). The router and ``L`` are chosen together on
  validation (:func:`choose_rule`). A second opinion only adds urgent referrals: the other
  model's own referral (``decide``), when urgent.

Every share carries a 95% Wilson interval. Validation photos choose; test photos report.

    .venv/bin/python bench/closeups.py [--dermoscopy RUN] [--clinical RUN] [--per-split N]

Results: ``bench/results/closeups.{json,md}``; routers in ``bench/work/closeups/``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import WORK, fmt, machine, repo_relative, write_results

from dermalab.core.runs import load_run
from dermalab.data.prepare import prepare_data
from dermalab.deploy.router import ImageRouter
from dermalab.deploy.router_fit import CLOSEUPS, closeup_views, fit_router_for_runs
from dermalab.serve.answer import (
    is_not_skin,
    load_conditions,
    routed_type,
    second_opinion_type,
)
from dermalab.serve.models import ServedModel
from dermalab.serve.service import second_opinion

ZOOMS = {"clinical": (1.0, 0.5, 0.33), "dermoscopic": (1.0, 0.5)}
LINES = (0.6, 0.8, 0.9, 0.95, 1.01)  # 1.01: always both
MAX_FALSE_URGENT_RISE = 0.02
MELANOMA = {"melanoma", "mel"}


def wilson(k: int, n: int) -> list[float] | None:
    """95% Wilson score interval of ``k`` of ``n``."""
    if n == 0:
        return None
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(0.95, method="wilson")
    return [float(ci.low), float(ci.high)]


def held_out(run_dir: Path, split: str, limit: int, seed: int = 0) -> list[tuple[str, str]]:
    """``(path, label)`` of up to ``limit`` photos of a run's ``split`` (a fixed random subset)."""
    run = load_run(run_dir, command="bench closeups")
    data = prepare_data(run.config.data, run.info.image_size, split_path=run.paths.splits,
                        progress=False, write=False)
    samples = [s for s in data.samples(split) if s.path]
    if len(samples) > limit:
        rng = np.random.default_rng(seed)
        samples = [samples[i] for i in sorted(rng.choice(len(samples), limit, replace=False))]
    return [(str(s.path), s.label) for s in samples]


def assess_views(photos: list[tuple[str, str]], zooms: tuple[float, ...],
                 routers: dict[str, ImageRouter], models: dict[str, ServedModel],
                 malignant: set[str]) -> list[dict[str, Any]]:
    """Per photo and zoom: each router's probabilities and each model's served referral."""
    urgency = {c: e.get("urgency", "routine") for c, e in load_conditions().items()}
    rows = []
    for path, label in photos:
        with Image.open(path) as im:
            photo = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
        for z, view in zip(zooms, closeup_views(photo, zooms), strict=True):
            img = Image.fromarray(view)
            row: dict[str, Any] = {"zoom": z, "malignant": label in malignant,
                                   "melanoma": label in MELANOMA, "routes": {}, "urgent": {}}
            for name, router in routers.items():
                row["routes"][name] = router.route(img).probabilities
            for kind, model in models.items():
                # each model's own referral for the view, photo alone (the served rule)
                row["urgent"][kind] = second_opinion(model, img, urgency, 3)["urgent"]
            rows.append(row)
    return rows


def referral(row: dict[str, Any], router: str, line: float | None) -> tuple[str, bool]:
    """``(routed type, urgent)`` of one view under ``router`` and a rule (``line`` None:
    ``routed``; else ``both<line``)."""
    probs = row["routes"][router]
    served = list(row["urgent"])
    top = max(probs, key=lambda k: probs[k])
    if is_not_skin(top == "not_skin", False, False):
        return "not_skin", False
    kind = routed_type(served, probs)
    urgent = bool(row["urgent"][kind])
    other = second_opinion_type(served, {"image_type": kind, "chosen_by": "router",
                                         "probabilities": probs}, line)
    if other is not None:
        urgent = urgent or bool(row["urgent"][other])
    return kind, urgent


def share(flags: list[bool]) -> dict[str, Any]:
    k, n = int(sum(flags)), len(flags)
    return {"share": k / n if n else None, "ci": wilson(k, n), "n": n}


def table(views: dict[str, list[dict[str, Any]]], routers: list[str]) -> dict[str, Any]:
    """Every rule's shares per photo kind and zoom."""
    out: dict[str, Any] = {}
    rules: list[tuple[str, float | None]] = [("routed", None)] + [
        (f"both<{line:g}" if line <= 1 else "both always", line) for line in LINES]
    for router in routers:
        for rule, line in rules:
            key = f"{router} / {rule}"
            cells: dict[str, Any] = {}
            for kind, rows in views.items():
                for z in ZOOMS[kind]:
                    sub = [r for r in rows if r["zoom"] == z]
                    answered = [(*referral(r, router, line), r) for r in sub]
                    cells[f"{kind} x{z:g}"] = {
                        "to_clinical": share([k == "clinical" for k, _, _ in answered]),
                        "to_dermoscopic": share([k == "dermoscopic" for k, _, _ in answered]),
                        "malignant_urgent": share([u for _, u, r in answered if r["malignant"]]),
                        "melanoma_urgent": share([u for _, u, r in answered if r["melanoma"]]),
                        "benign_urgent": share([u for _, u, r in answered
                                                if not r["malignant"]])}
            out[key] = cells
    return out


def closeup_sensitivity(cells: dict[str, Any]) -> float:
    """Malignant urgent share over the clinical crops (0.5 and 0.33), photo-weighted."""
    parts = [cells[f"clinical x{z:g}"]["malignant_urgent"] for z in (0.5, 0.33)]
    n = sum(p["n"] for p in parts)
    return sum((p["share"] or 0.0) * p["n"] for p in parts) / n if n else 0.0


def false_urgent_rise(val: dict[str, Any], key: str) -> float:
    """How much a rule raises the false-urgent share of whole benign dermoscopic photos over
    the plain router's routed answer (validation)."""
    def benign(k: str) -> float:
        return float(val[k]["dermoscopic x1"]["benign_urgent"]["share"])
    return benign(key) - benign("plain / routed")


def not_skin_flagged(routers: dict[str, ImageRouter]) -> dict[str, Any]:
    """Each router's share of the held-out non-skin photos (``negative_images("test")``, the
    only held-out non-skin set) it calls not skin, and the sources of those it lets through."""
    from collections import Counter

    from dermalab.data.negatives import negative_images
    from dermalab.deploy.router import router_input

    negatives = negative_images("test")
    x = np.stack([router_input(n.image) for n in negatives])
    out = {}
    for name, router in routers.items():
        kinds = [router.types[i] for i in router.probabilities(x).argmax(1)]
        flags = [k == "not_skin" for k in kinds]
        missed = Counter(n.name.split("#")[0].split(":")[0]
                         for n, f in zip(negatives, flags, strict=True) if not f)
        out[name] = {**share(flags), "missed": dict(missed)}
    return out


def choose_rule(val: dict[str, Any], not_skin: dict[str, Any]) -> str:
    """The choice: among every router and rule, the highest close-up malignant sensitivity on
    validation whose dermoscopic benign false-urgent share (whole photos) rises by at most
    :data:`MAX_FALSE_URGENT_RISE` over the plain router's ``routed`` and whose router flags at
    most 0.02 fewer non-skin photos than the plain one; ties go to the earlier (plainer)."""
    best, best_s = "plain / routed", closeup_sensitivity(val["plain / routed"])
    for key, cells in val.items():
        router = key.split(" / ")[0]
        rise = false_urgent_rise(val, key)
        lost = not_skin["plain"]["share"] - not_skin[router]["share"]
        s = closeup_sensitivity(cells)
        if rise <= MAX_FALSE_URGENT_RISE and lost <= 0.02 and s > best_s + 1e-9:
            best, best_s = key, s
    return best


def cell_text(c: dict[str, Any]) -> str:
    if c["share"] is None:
        return "–"
    lo, hi = c["ci"]
    return f"{fmt(c['share'])} [{fmt(lo)}, {fmt(hi)}] ({c['n']})"


def markdown(report: dict[str, Any], split: str = "test") -> list[str]:
    test, chosen = report[split], report["chosen_on_validation"]
    md = [f"# Phone close-ups in the two-model app ({report['date']}, "
          f"{report['machine']['cpus']} CPUs)", "",
          f"Dermoscopy model `{report['dermoscopy_run']}`, clinical-photo model "
          f"`{report['clinical_run']}`. Stand-ins for phone close-ups: centre crops (x0.5, "
          f"x0.33 of each side) of the clinical run's {split} photos; the dermoscopic run's "
          f"{split} photos whole and at x0.5 check the other side. Shares with 95% Wilson "
          "intervals and the number of photos. Routers: `plain` on whole frames, `closeup` "
          f"with centre crops {', '.join(map(str, report['closeups']))} of every photo too "
          "(skin and non-skin; the non-skin class weighted 4 times). Rule "
          f"**chosen on validation: `{chosen}`** (the highest close-up malignant sensitivity "
          f"with dermoscopic false-urgent rise at most {MAX_FALSE_URGENT_RISE} and non-skin "
          "photos flagged at most 0.02 below the plain router).", "",
          "## Non-skin photos flagged (the held-out non-skin set)", "",
          "| router | flagged | let through |", "| --- | --- | --- |"]
    for router, c in report["not_skin_flagged"].items():
        missed = ", ".join(f"{k} {v}" for k, v in sorted(c["missed"].items())) or "none"
        md.append(f"| {router} | {cell_text(c)} | {missed} |")
    if "val" in report:
        val = report["val"]
        md += ["", "## The choice (validation)", "",
               "| router / rule | malignant close-ups urgent (x0.5 and x0.33) | rise of "
               "false-urgent on whole benign dermoscopic photos | router's non-skin flagged |",
               "| --- | --- | --- | --- |"]
        for key, cells in val.items():
            rise = false_urgent_rise(val, key)
            mark = " **(chosen)**" if key == chosen else ""
            md.append(f"| {key}{mark} | {fmt(closeup_sensitivity(cells))} | {rise:+.3f} | "
                      f"{fmt(report['not_skin_flagged'][key.split(' / ')[0]]['share'])} |")
    md += ["",
          f"## Which model answers ({split})", "",
          "| router | photos | to clinical | to dermoscopic |", "| --- | --- | --- | --- |"]
    for router in ("plain", "closeup"):
        for where, c in test[f"{router} / routed"].items():
            md.append(f"| {router} | {where} | {cell_text(c['to_clinical'])} | "
                      f"{cell_text(c['to_dermoscopic'])} |")
    md += ["", f"## Urgent referral ({split})", "",
           "Malignant: the source's malignant classes (melanoma, basal cell carcinoma, "
           "actinic keratosis / squamous cell carcinoma, rare skin cancers; HAM10000 mel, "
           "bcc, akiec). Benign: every other photo.", "",
           "| router / rule | photos | malignant urgent | melanoma urgent | benign urgent |",
           "| --- | --- | --- | --- | --- |"]
    for key, cells in test.items():
        mark = " **(chosen)**" if key == chosen else ""
        for where, c in cells.items():
            md.append(f"| {key}{mark} | {where} | {cell_text(c['malignant_urgent'])} | "
                      f"{cell_text(c['melanoma_urgent'])} | {cell_text(c['benign_urgent'])} |")
    md += ["", f"Wall time {report['wall_min']:.1f} min (router fits, both models on every "
           "view of validation and test)."]
    return md


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dermoscopy", default=str(WORK / "quality" / "default" / "s101"))
    ap.add_argument("--clinical", default=str(WORK / "clinical" / "default" / "s101"))
    ap.add_argument("--per-split", type=int, default=600,
                    help="photos per run and split (a fixed random subset)")
    ap.add_argument("--validation-only", action="store_true",
                    help="a lever: measure validation only (its test is not read)")
    ap.add_argument("--name", default="closeups", help="results file name")
    args = ap.parse_args()
    start = time.time()
    runs = {"dermoscopic": Path(args.dermoscopy), "clinical": Path(args.clinical)}
    work = WORK / "closeups"
    routers = {}
    for name, closeups in (("plain", ()), ("closeup", CLOSEUPS)):
        folder = work / f"router_{name}"
        if not (folder / "router.json").is_file():
            fit_router_for_runs([runs["dermoscopic"], runs["clinical"]], folder,
                                closeups=closeups)
        routers[name] = ImageRouter.load(folder)
    models = {k: ServedModel(v) for k, v in runs.items()}
    malignant = {c for m in models.values() for c in m.info.decision.malignant_classes}
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "machine": machine(),
                              "dermoscopy_run": repo_relative(str(runs["dermoscopic"])),
                              "clinical_run": repo_relative(str(runs["clinical"])),
                              "closeups": list(CLOSEUPS), "lines": list(LINES),
                              "routers": {k: json.loads((work / f"router_{k}" / "router.json")
                                                        .read_text()).get("val_closeup")
                                          for k in routers}}
    for split in ("val",) if args.validation_only else ("val", "test"):
        views = {kind: assess_views(held_out(run, split, args.per_split), ZOOMS[kind],
                                    routers, models, malignant)
                 for kind, run in runs.items()}
        report[split] = table(views, list(routers))
        print(f"{split}: {sum(len(v) for v in views.values())} views", flush=True)
    report["not_skin_flagged"] = not_skin_flagged(routers)
    report["chosen_on_validation"] = choose_rule(report["val"], report["not_skin_flagged"])
    report["wall_min"] = (time.time() - start) / 60
    write_results(args.name, report, markdown(report, "test" if "test" in report else "val"))


if __name__ == "__main__":
    main()
