"""Benchmark: how small may the spot be in the frame before the served answer changes, and does
the photo check's spot estimate (``dermalab.data.photo_quality.spot_share``) see it?

No photos of one lesion from several distances are in ``../shared/data``. The stand-ins:
held-out HAM10000 photos (the dermoscopy run's lesion-grouped validation and test splits)
whose lesion outline does not touch the frame, **taken from further away**: the photo in the
middle of its own skin, mirrored outward (``numpy.pad``, reflect, of a copy whose lesion is
covered by the skin colour around it, so no second lesion appears), scaled back to the
photo's size. At zoom ``k`` the lesion covers ``k²`` of the share it had (its outline says
exactly how much). Mirroring repeats the skin's own texture; a dermatoscope's dark corners
are mirrored too.

For every photo and zoom: the lesion's true share, the spot estimate, and the served answer
of the dermoscopy model for the photo alone (``ServedModel.assess``, ``answer.is_not_skin``
and ``answer.decide``, as the service applies them): "not skin" or not, the top condition
and the referral. **The answer changed** when any of them differs from the photo as taken.

- The estimate against the outline: Jaccard on every held-out photo as taken, and the
  estimated / true share.
- ``SPOT_BELOW``: the line on the estimate that best separates changed answers from kept
  ones (Youden's J on validation: share of changed answers flagged minus share of kept ones
  flagged, the photos as taken among the kept), among lines that flag at most 3% of the
  photos as taken (the bound of the other photo checks); measured on test: changed answers caught,
  photos as taken flagged, and malignant lesions' urgent referrals lost by zooming out and
  how many of those the check catches.
- Clinical photos as taken (DermNet NZ and Fitzpatrick17k, per skin type) below the same
  line, for the record: the check is asked for dermoscopic photos only (atlas photos often
  show a spot in a wide frame or a rash with no single spot, and the clinical model learned
  from such photos).

Every share carries a 95% Wilson interval.

    .venv/bin/python bench/spot_size.py [--dermoscopy RUN] [--per-split 400]

Results: ``bench/results/spot_size.{json,md}``; the chosen line is the module's
``SPOT_BELOW`` (a test checks they agree).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from closeups import held_out, share
from common import WORK, machine, repo_relative, write_results
from photo_quality import SHARED, SKIN_GROUPS, half, photos

from dermalab.data import photo_quality as pq
from dermalab.serve.answer import decide, is_not_skin, load_conditions
from dermalab.serve.models import ServedModel

ZOOMS = (1.0, 0.7, 0.5, 0.35, 0.25)
#: The most dermoscopic photos as taken the check may flag, on validation: the bound of the
#: other photo checks (bench/photo_quality.py).
MAX_FALSE_ALARMS = 0.03
#: A check that catches under half of the changed answers within that bound is not used.
MIN_CAUGHT = 0.5
#: Lines on the estimate shown for the record (validation): what each would flag and catch.
CURVE = (0.005, 0.01, 0.02, 0.03, 0.05, 0.08)


def outline(image_path: str) -> np.ndarray:
    """The HAM10000 lesion outline of a photo (thresholded at 128: the masks' edges are grey)."""
    stem = Path(image_path).stem
    mask = SHARED / "ham10000_200x150" / "masks" / f"{stem}_segmentation.png"
    return np.asarray(Image.open(mask).convert("L")) >= 128


def skin_only(photo: np.ndarray, lesion: np.ndarray) -> np.ndarray:
    """``photo`` with its lesion covered by the skin colour around it (the median of a ring
    outside the outline), edges softened: the surroundings a wider photo would add."""
    from scipy import ndimage

    ring = ndimage.binary_dilation(lesion, iterations=6) & ~lesion
    out = photo.astype(np.float32)
    out[lesion] = np.median(out[ring], axis=0)
    soft = ndimage.gaussian_filter(out, sigma=(3, 3, 0))
    edge = ndimage.binary_dilation(lesion, iterations=3)
    out[edge] = soft[edge]
    return np.clip(out, 0, 255).astype(np.uint8)


def zoom_out(photo: np.ndarray, lesion: np.ndarray, k: float) -> np.ndarray:
    """``photo`` as if taken from ``1/k`` times as far: the photo in the middle of its own skin
    (:func:`skin_only`) mirrored outward, scaled back to the photo's size (``k`` = 1: the
    photo itself)."""
    if k >= 1:
        return photo
    h, w = photo.shape[:2]
    ph, pw = round(h * (1 / k - 1) / 2), round(w * (1 / k - 1) / 2)
    wide = np.pad(skin_only(photo, lesion), ((ph, ph), (pw, pw), (0, 0)), mode="reflect")
    wide[ph: ph + h, pw: pw + w] = photo
    return np.asarray(Image.fromarray(wide).resize((w, h), Image.Resampling.BOX))


def answer(model: ServedModel, img: Image.Image, urgency: dict[str, str]
           ) -> tuple[bool, str | None, str | None]:
    """The served answer for a photo alone, as the service decides it with this model alone:
    ``(not skin, top condition, referral)``."""
    a = model.assess(img)
    not_skin = is_not_skin(None, a.out_of_distribution, True)
    classes = list(model.info.classes)
    _, referral, order = decide(a.probs, not_skin, model.uncertain_threshold, 3,
                                a.malignant_p, a.malignant_t, urgency, classes)
    return not_skin, (None if not_skin else classes[order[0]]), referral


def views(model: ServedModel, photos: list[tuple[str, str]]) -> tuple[list[dict[str, Any]],
                                                                      list[float]]:
    """Per photo (outline clear of the frame) and zoom: true share, estimate, answer, whether
    it changed; and the Jaccard of the estimate on every photo as taken."""
    urgency = {c: e.get("urgency", "routine") for c, e in load_conditions().items()}
    malignant = set(model.info.decision.malignant_classes)
    rows, jaccard = [], []
    for path, label in photos:
        with Image.open(path) as im:
            photo = np.asarray(im.convert("RGB"))
        lesion = outline(path)
        est = pq.spot_mask(Image.fromarray(photo))
        if est is None:
            jaccard.append(0.0)
        else:
            full = np.asarray(Image.fromarray(est.astype(np.uint8) * 255).resize(
                (photo.shape[1], photo.shape[0]), Image.Resampling.NEAREST)) >= 128
            jaccard.append(float((full & lesion).sum() / max(1, (full | lesion).sum())))
        if lesion[0].any() or lesion[-1].any() or lesion[:, 0].any() or lesion[:, -1].any():
            continue  # mirroring would copy the lesion itself
        first = None
        for k in ZOOMS:
            img = Image.fromarray(zoom_out(photo, lesion, k))
            got = answer(model, img, urgency)
            first = first or got
            rows.append({"zoom": k, "true_share": float(lesion.mean()) * k * k,
                         "estimate": pq.spot_share(img), "changed": got != first,
                         "correct": got[1] == label,
                         "malignant": label in malignant,
                         "urgent_as_taken": first[2] == "urgent", "urgent": got[2] == "urgent"})
    return rows, jaccard


def flagged(row: dict[str, Any], line: float) -> bool:
    return row["estimate"] is not None and row["estimate"] < line


def youden_line(rows: list[dict[str, Any]], bounds: list[list[float | None]]
                ) -> tuple[float | None, float]:
    """The line maximising (changed answers flagged) - (kept answers flagged), among those
    that flag at most ``MAX_FALSE_ALARMS`` of the photos as taken of every group in
    ``bounds`` (each a list of estimates); and its J. ``None`` when no line keeps the bound."""
    changed = [r for r in rows if r["changed"]]
    kept = [r for r in rows if not r["changed"]]
    best, best_t = -2.0, None
    for t in sorted({r["estimate"] for r in rows if r["estimate"] is not None}):
        if any(np.mean([e is not None and e < t for e in g]) > MAX_FALSE_ALARMS
               for g in bounds if g):
            break  # a higher line flags at least as many
        j = (np.mean([flagged(r, t) for r in changed]) -
             np.mean([flagged(r, t) for r in kept]))
        if j > best:
            best, best_t = float(j), float(t)
    return (None if best_t is None else round(best_t, 4)), best


def measure(rows: list[dict[str, Any]], line: float) -> dict[str, Any]:
    """What the check does at ``line`` on one split's views."""
    by_zoom = {}
    for k in ZOOMS:
        z = [r for r in rows if r["zoom"] == k]
        mal = [r for r in z if r["malignant"] and r["urgent_as_taken"]]
        by_zoom[str(k)] = {
            "true_share_median": float(np.median([r["true_share"] for r in z])),
            "estimate_median": float(np.median([r["estimate"] for r in z
                                                if r["estimate"] is not None] or [np.nan])),
            "answer_changed": share([r["changed"] for r in z]),
            "top_condition_right": share([r["correct"] for r in z]),
            "flagged": share([flagged(r, line) for r in z]),
            "malignant_still_urgent": share([r["urgent"] for r in mal])}
    changed = [r for r in rows if r["changed"]]
    lost = [r for r in rows if r["malignant"] and r["urgent_as_taken"] and not r["urgent"]]
    return {"zoom": by_zoom, "changed_caught": share([flagged(r, line) for r in changed]),
            "curve": {str(t): {"as_taken_flagged": share([flagged(r, t) for r in rows
                                                          if r["zoom"] == 1.0])["share"],
                               "changed_caught": share([flagged(r, t) for r in changed])["share"],
                               "urgent_lost_caught": share([flagged(r, t) for r in lost])["share"]}
                      for t in CURVE},
            "as_taken_flagged": share([flagged(r, line) for r in rows if r["zoom"] == 1.0]),
            "urgent_lost_caught": share([flagged(r, line) for r in lost])}


def clinical_estimates(per_source: int) -> dict[str, dict[str, list[float | None]]]:
    """Spot estimates of clinical photos as taken (``bench/photo_quality.py``'s photos and
    halves), per group (DermNet NZ; Fitzpatrick17k per skin type) and half."""
    sources = photos(per_source)
    groups: dict[str, list[Path]] = {"DermNet NZ": [p for p, _ in
                                                    sources["clinical (DermNet NZ)"]]}
    for g in SKIN_GROUPS:
        groups[f"Fitzpatrick17k {g}"] = [p for p, gg in sources["clinical (Fitzpatrick17k)"]
                                         if gg == g]
    out: dict[str, dict[str, list[float | None]]] = {}
    for name, files in groups.items():
        out[name] = {"val": [], "test": []}
        for p in files:
            with Image.open(p) as im:
                out[name][half(p)].append(pq.spot_share(im.convert("RGB")))
    return out


def pct(c: dict[str, Any]) -> str:
    if c["share"] is None:
        return "–"
    lo, hi = c["ci"]
    return f"{c['share']:.1%} [{lo:.1%}, {hi:.1%}] (n {c['n']})"


def line_text(report: dict[str, Any]) -> list[str]:
    """What was chosen, and why (used or not)."""
    bound = (f"among lines that flag at most {report['max_false_alarms']:.0%} of the "
             "HAM10000 photos as taken")
    line = report["line_within_bound"]
    if line is None:
        return [f"**The check is not used**: no line {bound} exists."]
    said = (f"the line {bound} that maximises Youden's J on validation "
            f"({report['val_youden']:.3f}) "
            f"catches {report['val_changed_caught']:.0%} of the changed answers there")
    if report["used"]:
        return [f"**`SPOT_BELOW` = {line}**: {said}."]
    return [f"**The check is not used** (`SPOT_BELOW` = None): {said}, under the "
            f"{report['min_caught']:.0%} a check must catch. The tables below are measured at "
            f"that line ({line}), for the record."]


def markdown(report: dict[str, Any]) -> list[str]:
    t = report["test"]
    md = [f"# How small may the spot be? ({report['date']}, {report['machine']['cpus']} CPUs)",
          "", f"Dermoscopy model `{report['dermoscopy_run']}`, served answer for a photo alone. "
          "Held-out HAM10000 photos taken from further away (the photo amid its own skin, "
          "mirrored: `bench/spot_size.py`'s docstring). Line chosen on validation, measured "
          "on test; 95% Wilson intervals.", "",
          *line_text(report), "",
          f"Spot estimate against the lesion outline (test, photos as taken): Jaccard median "
          f"{report['jaccard']['test_median']:.3f} (mean {report['jaccard']['test_mean']:.3f}, "
          f"n {report['jaccard']['test_n']}); estimated / true share median "
          f"{report['share_ratio_median']:.2f}.", "",
          "| zoom | true share (median) | estimate (median) | answer changed | top condition "
          "right | flagged small | malignant still urgent |", "|" + " --- |" * 7]
    for k, z in t["zoom"].items():
        md.append(f"| {k} | {z['true_share_median']:.1%} | {z['estimate_median']:.1%} | "
                  f"{pct(z['answer_changed'])} | {pct(z['top_condition_right'])} | "
                  f"{pct(z['flagged'])} | "
                  f"{pct(z['malignant_still_urgent'])} |")
    md += ["", "Other lines, on validation (the trade a line makes: HAM10000 photos as taken "
           "flagged, against changed answers and lost urgent referrals caught):", "",
           "| line | as taken flagged | changed answers caught | urgent referrals lost, "
           "caught |", "| --- | --- | --- | --- |"]
    md += [f"| {k} | {c['as_taken_flagged']:.1%} | {c['changed_caught']:.1%} | "
           f"{c['urgent_lost_caught']:.1%} |" for k, c in report["val"]["curve"].items()]
    md += ["", f"- Changed answers caught by the check: {pct(t['changed_caught'])}.",
           f"- Photos as taken flagged: {pct(t['as_taken_flagged'])}.",
           f"- Malignant lesions' urgent referrals lost by zooming out that the check catches "
           f"(the person is asked for a closer photo): {pct(t['urgent_lost_caught'])}.", "",
           "The check is asked for dermoscopic photos only. For the record, the share of "
           "clinical photos as taken whose spot estimate is below the same line (atlas photos "
           "often show a spot in a wide frame, or a rash with no single spot, and the clinical "
           "model learned from such photos; no outlines to say which):", "",
           "| photos | flagged |", "| --- | --- |"]
    md += [f"| {k} | {pct(v)} |" for k, v in report["clinical_flagged"].items()]
    md += ["", f"Wall time {report['wall_min']:.1f} min."]
    return md


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dermoscopy", default=str(WORK / "quality" / "default" / "s303"))
    ap.add_argument("--per-split", type=int, default=400)
    ap.add_argument("--clinical-per-source", type=int, default=300)
    args = ap.parse_args()
    start = time.time()
    model = ServedModel(Path(args.dermoscopy))
    rows, jac = {}, {}
    for split in ("val", "test"):
        rows[split], jac[split] = views(model, held_out(Path(args.dermoscopy), split,
                                                        args.per_split))
        print(f"{split}: {len(rows[split])} views", flush=True)
    clinical = clinical_estimates(args.clinical_per_source)
    as_taken_val = [r["estimate"] for r in rows["val"] if r["zoom"] == 1.0]
    line, j = youden_line(rows["val"], [as_taken_val])
    caught = (measure(rows["val"], line)["changed_caught"]["share"] or 0.0
              if line is not None else 0.0)
    used = line is not None and caught >= MIN_CAUGHT
    at = line if line is not None else 0.0
    as_taken = [r for r in rows["test"] if r["zoom"] == 1.0 and r["estimate"] is not None]
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"), "machine": machine(),
        "dermoscopy_run": repo_relative(args.dermoscopy), "zooms": list(ZOOMS),
        "max_false_alarms": MAX_FALSE_ALARMS, "min_caught": MIN_CAUGHT,
        "line_within_bound": line, "val_youden": j, "val_changed_caught": caught,
        "used": used, "thresholds": {"SPOT_BELOW": line if used else None},
        "jaccard": {"test_median": float(np.median(jac["test"])),
                    "test_mean": float(np.mean(jac["test"])), "test_n": len(jac["test"])},
        "share_ratio_median": float(np.median([r["estimate"] / r["true_share"]
                                               for r in as_taken])),
        "val": measure(rows["val"], at), "test": measure(rows["test"], at),
        "clinical_flagged": {k: share([e is not None and e < at for e in g["test"]])
                             for k, g in clinical.items()}}
    report["wall_min"] = (time.time() - start) / 60
    write_results("spot_size", report, markdown(report))


if __name__ == "__main__":
    main()
