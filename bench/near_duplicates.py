"""Benchmark: the near-duplicate threshold (``data.near_duplicates``), chosen by measurement.

Originals: photos from the shared HAM10000 (one image per lesion, so no two show one lesion),
DermNet NZ and Fitzpatrick17k sets. Copies: each original saved again as a user's or an
atlas's copy would be (JPEG quality 55-90, resized to 45-90%, cropped by up to 6% a side,
or all three). Both are hashed as the pipeline hashes them (the decoded image at the model's
input size, 128 px squashed: ``dermalab.data.near_duplicates``).

Reported per threshold ``t`` (both pHash and dHash within ``t`` bits): the share of copies
found (recall) and the share of pairs of distinct originals linked (false links), per
source. DermNet and Fitzpatrick17k are known to hold duplicates of their own, so some of their
"distinct" pairs within ``t`` are true copies: the linked pairs up to 12 bits are written out
(``near_duplicates_pairs.csv``) to look at. Then each whole set is linked at several ``t``
and the groups described (``whole_sets``).

    .venv/bin/python bench/near_duplicates.py [--per-source 600]
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import HAM, RESULTS, SHARED, machine, write_results

from dermalab.data.images import resize_rgb
from dermalab.data.near_duplicates import hamming, perceptual_hashes

SIZE = 128
THRESHOLDS = list(range(0, 17))


def originals(per_source: int, seed: int) -> dict[str, list[Path]]:
    rng = np.random.default_rng(seed)
    with open(HAM / "HAM10000_metadata.csv") as f:
        first = {}
        for r in csv.DictReader(f):
            first.setdefault(r["lesion_id"], r["image_id"])
    ham = sorted(HAM / "images" / f"{i}.jpg" for i in first.values())
    dermnet = sorted((SHARED / "dermnetnz_subset").glob("*/*.jpg"))
    fitz = sorted((SHARED / "fitzpatrick17k_subset" / "images").glob("*.jpg"))
    out = {}
    for name, files in (("HAM10000", ham), ("DermNet NZ", dermnet), ("Fitzpatrick17k", fitz)):
        pick = rng.choice(len(files), min(per_source, len(files)), replace=False)
        out[name] = [files[i] for i in sorted(pick)]
    return out


def copy_of(img: Image.Image, kind: str, rng: np.random.Generator) -> Image.Image:
    """A re-saved copy: JPEG quality, resize, crop, or all three."""
    out = img
    if kind in ("crop", "all"):
        w, h = out.size
        dx, dy = (rng.uniform(0, 0.06, 2) * [w, h]).astype(int)
        ex, ey = (rng.uniform(0, 0.06, 2) * [w, h]).astype(int)
        out = out.crop((dx, dy, w - ex, h - ey))
    if kind in ("resize", "all"):
        f = rng.uniform(0.45, 0.9)
        out = out.resize((max(8, round(out.width * f)), max(8, round(out.height * f))),
                         Image.Resampling.BICUBIC)
    if kind in ("jpeg", "all"):
        buf = io.BytesIO()
        out.save(buf, "JPEG", quality=int(rng.integers(55, 91)))
        out = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return out


def hashed(img: Image.Image) -> tuple[int, int]:
    return perceptual_hashes(np.asarray(resize_rgb(img, SIZE, "squash"), np.uint8))


def whole_sets(thresholds: tuple[int, ...] = (6, 8, 10, 12)) -> dict[str, Any]:
    """The groups near-duplicate linking forms on each whole shared set: how many photos and
    how large the largest group gets; for HAM10000, the links between distinct lesions and
    between different diagnoses (the dermatoscope's black vignette makes distinct lesions
    collide, which is why sources with lesion ids do not look for near-duplicates by default)."""
    from dermalab.data.images import load_resized
    from dermalab.data.near_duplicates import find_near_duplicates

    with open(HAM / "HAM10000_metadata.csv") as f:
        meta = {r["image_id"]: r for r in csv.DictReader(f)}
    sets = {"HAM10000": sorted(HAM / "images" / f"{i}.jpg" for i in meta),
            "DermNet NZ": sorted((SHARED / "dermnetnz_subset").glob("*/*.jpg")),
            "Fitzpatrick17k": sorted((SHARED / "fitzpatrick17k_subset" / "images").glob("*.jpg"))}
    out: dict[str, Any] = {}
    for name, files in sets.items():
        pixels = {str(p): load_resized(str(p), SIZE, "squash") for p in files}
        rows = []
        for t in thresholds:
            near = find_near_duplicates(sorted(pixels), pixels.__getitem__, t)
            sizes = sorted((len(g) for g in near.groups.values()), reverse=True)
            row = {"t": t, "groups": len(sizes), "photos": sum(sizes),
                   "largest": sizes[:3], "pairs": len(near.pairs)}
            if name == "HAM10000":
                lesion = {str(HAM / "images" / f"{i}.jpg"): r for i, r in meta.items()}
                cross = [(a, b) for a, b, _, _ in near.pairs
                         if lesion[a]["lesion_id"] != lesion[b]["lesion_id"]]
                row["pairs_of_distinct_lesions"] = len(cross)
                row["pairs_of_different_diagnoses"] = sum(lesion[a]["dx"] != lesion[b]["dx"]
                                                          for a, b in cross)
                row["most_lesions_in_a_group"] = max(
                    (len({lesion[p]["lesion_id"] for p in g}) for g in near.groups.values()),
                    default=0)
            rows.append(row)
        out[name] = {"photos": len(files), "thresholds": rows}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-source", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    kinds = ["jpeg", "resize", "crop", "all"]
    rows, report_sources = [], {}
    all_pairs = []
    for source, files in originals(args.per_source, args.seed).items():
        orig, copies, names = [], [], []
        for i, p in enumerate(files):
            img = Image.open(p).convert("RGB")
            orig.append(hashed(img))
            copies.append(hashed(copy_of(img, kinds[i % len(kinds)], rng)))
            names.append(str(p.relative_to(SHARED)))
        o, c = np.array(orig, np.uint64), np.array(copies, np.uint64)
        copy_d = np.maximum(hamming(o[:, 0], c[:, 0]), hamming(o[:, 1], c[:, 1]))
        dp = hamming(o[:, None, 0], o[None, :, 0])
        dd = hamming(o[:, None, 1], o[None, :, 1])
        iu = np.triu_indices(len(o), 1)
        distinct_d = np.maximum(dp, dd)[iu]
        per_t = []
        for t in THRESHOLDS:
            per_t.append({"t": t, "copies_found": float(np.mean(copy_d <= t)),
                          "by_kind": {k: float(np.mean(copy_d[np.arange(len(o)) % 4 == j] <= t))
                                      for j, k in enumerate(kinds)},
                          "distinct_pairs_linked": int(np.sum(distinct_d <= t)),
                          "distinct_pair_rate": float(np.mean(distinct_d <= t))})
        report_sources[source] = {"originals": len(o), "distinct_pairs": len(distinct_d),
                                  "thresholds": per_t}
        for a, b in zip(*iu, strict=True):
            d = int(max(dp[a, b], dd[a, b]))
            if d <= 12:
                all_pairs.append((source, names[a], names[b], int(dp[a, b]), int(dd[a, b])))
        rows.append(source)
    from dermalab.data.near_duplicates import DEFAULT_MAX_DISTANCE

    md = ["# Near-duplicate threshold", "",
          f"Originals per source: up to {args.per_source} (HAM10000: one image per lesion); "
          f"one re-saved copy each (JPEG 55-90, resized 45-90%, cropped up to 6% a side, or "
          f"all three, in turn), hashed at {SIZE} px like the pipeline. Linked: both pHash "
          f"and dHash within t bits of 64. Shipped default: t = {DEFAULT_MAX_DISTANCE}.", ""]
    for source, rep in report_sources.items():
        md += [f"## {source} ({rep['originals']} originals, {rep['distinct_pairs']:,} distinct "
               "pairs)", "", "| t | copies found | jpeg | resize | crop | all three | distinct "
               "pairs linked | rate |", "|---|---|---|---|---|---|---|---|"]
        for r in rep["thresholds"]:
            k = r["by_kind"]
            md.append(f"| {r['t']} | {r['copies_found']:.3f} | {k['jpeg']:.3f} | "
                      f"{k['resize']:.3f} | {k['crop']:.3f} | {k['all']:.3f} | "
                      f"{r['distinct_pairs_linked']} | {r['distinct_pair_rate']:.2e} |")
        md.append("")
    whole = whole_sets()
    md += ["## Whole sets: the groups linking forms", "",
           "| set | photos | t | groups | photos in groups | largest groups | pairs | HAM10000: "
           "pairs of distinct lesions / of different diagnoses, most lesions in one group |",
           "|---|---|---|---|---|---|---|---|"]
    for name, rep in whole.items():
        for r in rep["thresholds"]:
            ham = (f"{r['pairs_of_distinct_lesions']} / {r['pairs_of_different_diagnoses']}, "
                   f"{r['most_lesions_in_a_group']}" if "most_lesions_in_a_group" in r else "")
            md.append(f"| {name} | {rep['photos']} | {r['t']} | {r['groups']} | {r['photos']} | "
                      f"{r['largest']} | {r['pairs']} | {ham} |")
    md += ["", "Dermoscopy photos share the dermatoscope's black vignette, so on HAM10000 "
           "distinct lesions link into large groups (and pairs of different diagnoses would "
           "count as label conflicts): sources with lesion ids (HAM10000, ISIC) keep those "
           "and do not look for near-duplicates unless `data.near_duplicates` is set; folders "
           "of images (DermNet NZ, Fitzpatrick17k) do, at the default distance.", ""]
    with open(RESULTS / "near_duplicates_pairs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["source", "a", "b", "phash_distance", "dhash_distance"])
        w.writerows(sorted(all_pairs, key=lambda r: max(r[3], r[4])))
    write_results("near_duplicates", {"machine": machine(), "size": SIZE,
                                      "per_source": args.per_source, "seed": args.seed,
                                      "default": DEFAULT_MAX_DISTANCE,
                                      "sources": report_sources, "whole_sets": whole}, md)


if __name__ == "__main__":
    main()
