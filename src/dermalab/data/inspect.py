"""``dermalab data inspect``: what is in a dataset, and whether its split is sound.

Decodes every image (to find unreadable ones; every problem is listed, not only the first),
collects image sizes, finds byte-identical files and near-duplicates (re-encoded, resized or
lightly cropped copies: :mod:`dermalab.data.near_duplicates`), makes or reads the split and
checks it for group and duplicate leaks.
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dermalab.core.config import DataConfig, ExperimentConfig, with_values
from dermalab.core.errors import ImageError
from dermalab.data.images import open_rgb
from dermalab.data.masks import mask_coverage
from dermalab.data.near_duplicates import (
    NearDuplicates,
    find_near_duplicates,
    max_distance_for,
)
from dermalab.data.prepare import label_conflicts
from dermalab.data.samples import Sample, SourceData
from dermalab.data.sources import load_source
from dermalab.data.splits import (
    SPLITS,
    check_leaks,
    resolve_split,
    small_class_warnings,
    write_split,
)


def _probe(data: SourceData, s: Sample) -> tuple[str, tuple[int, int] | None, str | None]:
    """(content hash, original (width, height), error) of one sample."""
    if s.path is None:
        assert data.arrays is not None and s.index is not None
        arr = data.arrays[s.index]
        return (hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest(),
                (int(arr.shape[1]), int(arr.shape[0])), None)
    try:
        raw = Path(s.path).read_bytes()
    except OSError as exc:
        return "", None, f"cannot read file: {exc.strerror or exc}"
    digest = hashlib.sha256(raw).hexdigest()
    try:
        img = open_rgb(raw, name=s.path, draft_size=32)
        # draft() shrinks the decoded size; the header knows the true one.
        with Image.open(io.BytesIO(raw)) as hdr:
            size = hdr.size
        del img
        return digest, size, None
    except ImageError as exc:
        return digest, None, exc.reason


def _pixels(data: SourceData, s: Sample, size: int = 128) -> np.ndarray:
    """A sample's pixels as the pipeline caches them (squashed to ``size``), for hashing."""
    from dermalab.data.images import load_resized, resize_rgb

    if s.path is None:
        assert data.arrays is not None and s.index is not None
        img = Image.fromarray(np.ascontiguousarray(data.arrays[s.index])).convert("RGB")
        return np.asarray(resize_rgb(img, size, "squash"), np.uint8)
    return load_resized(s.path, size, "squash")


def _near_report(near: NearDuplicates, by_id: dict[str, Sample], max_distance: int,
                 crossing: int) -> dict[str, Any]:
    """Near-duplicate groups, their pairs, the pairs under two labels, and how many groups
    cross the split."""
    cross = [(a, b, dp, dd) for a, b, dp, dd in near.pairs if by_id[a].label != by_id[b].label]
    groups = list(near.groups.values())
    return {"max_distance": max_distance, "groups": len(groups),
            "files": sum(len(g) for g in groups), "pairs": len(near.pairs),
            "cross_class_pairs": len(cross), "crossing_splits": crossing,
            "examples": groups[:5],
            "cross_class": [{"a": a, "label_a": by_id[a].label, "b": b,
                             "label_b": by_id[b].label, "phash": dp, "dhash": dd}
                            for a, b, dp, dd in cross[:50]]}


def _skin_types(samples: list[Sample], ids: dict[str, set[str]]) -> dict[str, Any] | None:
    """Images per labelled Fitzpatrick skin type (I-VI) and per group (I-II, III-IV, V-VI),
    in all and per split; None when the data has no skin-type labels."""
    labelled = [s for s in samples if s.meta.get("fitzpatrick") not in (None, "")]
    if not labelled:
        return None
    from dermalab.core.skin import skin_type_group

    def counts(group: list[Sample]) -> dict[str, int]:
        return dict(sorted(Counter(skin_type_group(s.meta.get("fitzpatrick"))
                                   for s in group).items()))

    return {"types": dict(sorted(Counter(str(s.meta["fitzpatrick"]) for s in labelled).items())),
            "groups": counts(samples),
            "per_split": {sp: counts([s for s in samples if s.sample_id in ids[sp]])
                          for sp in SPLITS}}


def inspect_dataset(
    cfg: DataConfig,
    source: str | None = None,
    split_out: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Inspect a dataset; returns the JSON-able report (see the CLI's ``--json``)."""
    data = load_source(cfg, source)
    with ThreadPoolExecutor(max_workers=4) as pool:
        probes = list(pool.map(lambda s: _probe(data, s), data.samples))
    unreadable = []
    hashes: dict[str, str] = {}
    sizes: list[tuple[int, int]] = []
    good: list[Sample] = []
    for s, (digest, size, err) in zip(data.samples, probes, strict=True):
        if err is not None:
            unreadable.append({"path": s.path or s.sample_id, "error": err})
            continue
        hashes[s.sample_id] = digest
        assert size is not None
        sizes.append(size)
        good.append(s)
    dup_groups: dict[str, list[Sample]] = defaultdict(list)
    for s in good:
        dup_groups[hashes[s.sample_id]].append(s)
    dups = [g for g in dup_groups.values() if len(g) > 1]
    by_id = {smp.sample_id: smp for smp in good}
    near_at = max_distance_for(cfg.near_duplicates, data.kind)
    near = (find_near_duplicates(list(by_id), lambda sid: _pixels(data, by_id[sid]),
                                 near_at)
            if near_at >= 0 and cfg.split_by != "image" else NearDuplicates())
    copies = {**hashes, **near.group_of}  # identical and near-identical files: one unit
    conflicting = label_conflicts(good, copies)
    split = resolve_split(
        good,
        ratios=cfg.split_ratios,
        seed=cfg.split_seed,
        saved=None,
        external=cfg.split_file,
        given=({k: v for k, v in data.given_split.items() if k in hashes}
               if data.given_split else None),
        hashes=lambda: copies,
        by_image=cfg.split_by == "image",
    )
    leaks = check_leaks(good, split, hashes, near.group_of)
    split_file = None
    if split_out is not None:
        split_out.mkdir(parents=True, exist_ok=True)
        split_file = split_out / "splits.csv"
        write_split(split_file, good, split)
    per_split: dict[str, dict[str, int]] = {}
    for sp in SPLITS:
        c = Counter(s.label for s in good if split.assignment.get(s.sample_id) == sp)
        per_split[sp] = {k: c.get(k, 0) for k in sorted({s.label for s in good})}
    w = np.array([sz[0] for sz in sizes]) if sizes else np.zeros(0)
    h = np.array([sz[1] for sz in sizes]) if sizes else np.zeros(0)
    size_stats = {}
    if len(w):
        size_stats = {
            "width": {"min": int(w.min()), "median": float(np.median(w)), "max": int(w.max())},
            "height": {"min": int(h.min()), "median": float(np.median(h)), "max": int(h.max())},
            "most_common": [f"{a}x{b}" for (a, b), _ in Counter(sizes).most_common(3)],
        }
    return {
        "source": data.location,
        "format": data.kind,
        "n_images": len(data.samples),
        "n_readable": len(good),
        "classes": data.class_counts(),
        "display_names": data.display_names,
        "n_groups": len({s.group for s in data.samples}),
        "splits": per_split,
        "split_origin": split.origin,
        "split_file": str(split_file) if split_file else None,
        "split_warnings": [*data.warnings, *split.warnings, *small_class_warnings(per_split)],
        "group_overlap": leaks.group_overlap,
        "group_overlap_pairs": leaks.pairs,
        "duplicate_overlap": leaks.duplicate_overlap,
        "duplicates": {"groups": len(dups), "files": sum(len(g) for g in dups),
                       "conflicting_labels": len(conflicting),
                       "examples": [[s.sample_id for s in g] for g in dups[:5]],
                       "conflicts": [[{"sample_id": s.sample_id, "label": s.label} for s in g]
                                     for g in conflicting]},
        "near_duplicates": _near_report(near, by_id, near_at, leaks.near_duplicate_overlap)
        if near_at >= 0 else None,
        "skin_types": _skin_types(good, {sp: set(split.ids(sp)) for sp in SPLITS}),
        "conflicts_policy": cfg.conflicts,
        "masks": mask_coverage(good, sizes, cfg) if cfg.masks else None,
        "image_sizes": size_stats,
        "unreadable": unreadable,
        "bad": data.bad,
        "ignored": {"count": len(data.ignored), "examples": data.ignored[:5]},
    }


def format_report(report: dict[str, Any]) -> str:
    """A plain-text table of the report for the terminal."""
    classes = list(report["classes"])
    width = max([len(c) for c in classes] + [5]) + 2
    lines = [
        f"source   {report['source']} ({report['format']})",
        f"images   {report['n_images']:,} ({report['n_readable']:,} readable), "
        f"groups {report['n_groups']:,}, classes {len(classes)}",
        "",
        "class".ljust(width) + "".join(s.rjust(8) for s in ["total", *SPLITS]),
    ]
    for c in classes:
        row = [report["classes"][c]] + [report["splits"][sp].get(c, 0) for sp in SPLITS]
        lines.append(c.ljust(width) + "".join(f"{v:>8,}" for v in row))
    totals = [report["n_images"]] + [sum(report["splits"][sp].values()) for sp in SPLITS]
    lines.append("total".ljust(width) + "".join(f"{v:>8,}" for v in totals))
    lines.append("")
    lines.append(f"split    {report['split_origin']}"
                 + (f" -> {report['split_file']}" if report["split_file"] else ""))
    for warning in report["split_warnings"]:
        lines.append(f"warning  {warning}")
    lines.append(f"leaks    groups in >1 split: {report['group_overlap']} "
                 f"{report['group_overlap_pairs']}; identical files across splits: "
                 f"{report['duplicate_overlap']}")
    d = report["duplicates"]
    lines.append(f"dupes    {d['groups']} group(s) of byte-identical files ({d['files']} files, "
                 f"{d['conflicting_labels']} with conflicting labels)"
                 + (f"; data.conflicts={report['conflicts_policy']}: training "
                    + ("leaves them out" if report["conflicts_policy"] == "drop" else
                       "keeps them" if report["conflicts_policy"] == "keep" else "refuses them")
                    if d["conflicting_labels"] else ""))
    n = report.get("near_duplicates") or {}
    if n:
        lines.append(f"near     {n['groups']} group(s) of near-duplicate photos ({n['files']} "
                     f"files, {n['pairs']} pairs, {n['cross_class_pairs']} under two labels; "
                     f"both hashes within {n['max_distance']} bits), kept in one split"
                     + (f"; {n['crossing_splits']} cross this split" if n["crossing_splits"]
                        else ""))
        for c in n["cross_class"][:10]:
            lines.append(f"  near-duplicates under two labels: {c['a']} ({c['label_a']}) ~ "
                         f"{c['b']} ({c['label_b']})")
    for group in d.get("conflicts", [])[:20]:
        lines.append("  same picture, different labels: " + ", ".join(
            f"{m['sample_id']} ({m['label']})" for m in group))
    if len(d.get("conflicts", [])) > 20:
        lines.append(f"  ... and {len(d['conflicts']) - 20} more group(s) (--json lists all)")
    if report["image_sizes"]:
        s = report["image_sizes"]
        lines.append(f"sizes    width {s['width']['min']}-{s['width']['max']}, height "
                     f"{s['height']['min']}-{s['height']['max']}, most common "
                     f"{', '.join(s['most_common'])}")
    m = report.get("masks")
    if m:
        share = m["foreground_share"]
        lines.append(f"masks    {m['with_mask']:,} with a mask, {m['without_mask']:,} without, "
                     f"{m['empty']:,} empty, {len(m['bad'])} unusable ({m['source']})"
                     + (f"; lesion share of the image {share['min']:.1%}-{share['max']:.1%}, "
                        f"median {share['median']:.0%}" if share else ""))
        for b in m["bad"][:20]:
            lines.append(f"  {b['error']}")
    st = report.get("skin_types")
    if st:
        lines.append("skin     Fitzpatrick type groups: " + ", ".join(
            f"{k} {v}" for k, v in st["groups"].items()) + "; per split: " + "; ".join(
            f"{sp} " + ", ".join(f"{k} {v}" for k, v in c.items())
            for sp, c in st["per_split"].items()))
    lines.append(f"ignored  {report['ignored']['count']} non-image/hidden file(s)")
    lines.append(f"bad      {len(report['unreadable'])} unreadable image(s), "
                 f"{len(report['bad'])} skipped input problem(s)")
    for u in report["unreadable"][:20]:
        lines.append(f"  {u['path']}: {u['error']}")
    return "\n".join(lines)


def plot_split_counts(report: dict[str, Any], path: Path) -> None:
    """Grouped bar chart: images per class in each split (log scale: HAM10000 is 58:1)."""
    from dermalab.core.plots import bar_counts

    fig = bar_counts(report["splits"], title=f"Images per class and split - {report['source']}")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)


def shared_split(base: ExperimentConfig, out: Path) -> ExperimentConfig:
    """``base`` pinned to one split for every run made from it (tuning trials, compared
    backbones): the config's own split file, or ``OUT/splits.csv`` made here once (checked and
    reported like ``dermalab data inspect``) and reused when it exists."""
    if base.data.split_file:
        return base
    path = out / "splits.csv"
    if not path.is_file():
        inspect_dataset(base.data, split_out=out)
    return with_values(base, {"data.split_file": str(path.resolve())})
