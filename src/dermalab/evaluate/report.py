"""One self-contained HTML report per run (images embedded; readable offline).

Built only from the files of the run directory, so it can be regenerated at any time with
``dermalab report RUN_DIR``.
"""

from __future__ import annotations

import base64
import csv
import html
from pathlib import Path
from typing import Any

from dermalab.core.atomic import atomic_write_text
from dermalab.core.i18n import t
from dermalab.core.intervals import with_interval
from dermalab.core.metrics import metric_names
from dermalab.core.runs import RunPaths, read_metrics

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2433;
background:#f6f7f9}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:1.6rem;margin:0 0 4px} h2{font-size:1.2rem;border-bottom:2px solid #d0d5dd;
padding-bottom:4px;margin-top:32px}
section{background:#fff;border-radius:8px;padding:4px 20px 16px;margin:16px 0;
box-shadow:0 1px 2px rgba(0,0,0,.06)}
table{border-collapse:collapse;font-size:.9rem;margin:8px 0} th,td{padding:4px 10px;
border-bottom:1px solid #e4e7ec;text-align:right} th:first-child,td:first-child{text-align:left}
th{background:#f2f4f7} .kpi{display:flex;flex-wrap:wrap;gap:12px}
.kpi div{background:#eef4ff;border-radius:8px;padding:10px 14px;min-width:140px}
.kpi b{display:block;font-size:1.4rem} .kpi small{color:#475467} img{max-width:100%;height:auto}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(320px,1fr));gap:10px}
.warn{background:#fff4e5;border-left:4px solid #f79009;padding:8px 12px}
.note{color:#475467;font-size:.9rem} pre{background:#f2f4f7;padding:10px;overflow:auto;
font-size:.8rem;max-height:420px}
"""


def _img(path: Path, alt: str) -> str:
    if not path.is_file():
        return f'<p class="note">({html.escape(alt)}: not available)</p>'
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return html.escape(str(v))


def _ci(m: dict[str, Any], key: str, digits: int = 3) -> str:
    """``0.712 [0.680, 0.741]``: a value with its 95% interval from ``m["intervals"]``."""
    return with_interval(m.get(key), (m.get("intervals") or {}).get(key), digits, digits, "–")


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _chosen(m: dict[str, Any]) -> str:
    """Which weights the test figures are of: the best epoch, or an ensemble's members'."""
    monitor = html.escape(str(m.get("monitor")))
    members = m.get("members")
    if not members:
        return (f"the best checkpoint (epoch {m.get('best_epoch')} of {m.get('epochs_run')}, "
                f"selected on validation {monitor})")
    each = "; ".join(
        f"{html.escape(str(r.get('run')))}: seed {r.get('seed')}, epoch {r.get('best_epoch')} "
        f"of {r.get('epochs_run')}, test balanced accuracy {_fmt(r.get('balanced_accuracy'), 3)}"
        for r in members)
    return (f"an ensemble of {len(members)} runs of the recipe (the mean of their "
            f"temperature-scaled logits; each run's best checkpoint selected on validation "
            f"{monitor}): {each}")


def _history(paths: RunPaths) -> list[dict[str, str]]:
    p = paths.history
    if not p.is_file():
        return []
    with open(p) as f:
        return list(csv.DictReader(f))


def _curves(paths: RunPaths, m: dict[str, Any], hist: list[dict[str, str]]) -> str:
    """The run's curves and epoch table; for an ensemble, each member's (it has none of its
    own: its members trained)."""
    names = ("loss", "accuracy", "balanced_accuracy", "macro_f1", "precision", "recall", "lr")
    if not m.get("members"):
        imgs = "".join(_img(paths.plots / f"{n}.png", n) for n in names)
        rows = [[r["epoch"], float(r["lr"]), float(r["train_loss"]), float(r["val_loss"]),
                 float(r["val_balanced_accuracy"]), float(r["val_macro_f1"])] for r in hist]
        return (f'<div class="grid">{imgs}</div>'
                + _table(["epoch", "lr", "train loss", "val loss", "val bal-acc",
                          "val macro-F1"], rows))
    out = ""
    for member in m["members"]:
        mpaths = RunPaths(paths.root / str(member.get("run")))
        mh = _history(mpaths)
        imgs = "".join(_img(mpaths.plots / f"{n}.png", f"{member.get('run')}: {n}")
                       for n in ("loss", "balanced_accuracy"))
        rows = [[r["epoch"], float(r["train_loss"]), float(r["val_loss"]),
                 float(r["val_balanced_accuracy"])] for r in mh]
        out += (f"<h3>member {html.escape(str(member.get('run')))} (seed "
                f"{member.get('seed')}, best epoch {member.get('best_epoch')})</h3>"
                f'<div class="grid">{imgs}</div>'
                + _table(["epoch", "train loss", "val loss", "val bal-acc"], rows))
    return out or '<p class="note">No training history.</p>'


def _decision(m: dict[str, Any]) -> str:
    """What the model serves, how it was chosen on validation, and the rules beside it."""
    d = m.get("decision") or {}
    served = m.get("served") or {}
    prior = served.get("deployment_prior") or {}
    train = served.get("training_prior") or {}
    prior_rows = [[c, train.get(c), q] for c, q in prior.items()]
    head = (f'<p class="note">Served: the top class of softmax(z / T &minus; &tau; log &pi;) with '
            f"T = {_fmt(d.get('temperature'), 3)} and &tau; = {_fmt(d.get('tau'), 2)} "
            f"(eval.prior = {html.escape(str(d.get('prior_rule')))}), chosen on validation. "
            "&tau; = 0 keeps the training class shares &pi;, &tau; = 1 makes every class "
            "equally likely; the shares the served probabilities assume are declared below "
            f"(&prop; &pi;<sup>1&minus;&tau;</sup>). \"Not sure\" below a top probability of "
            f"{_fmt(d.get('uncertain_threshold'), 3)}.</p>")
    table = (_table(["class", "training share", "declared share"], prior_rows)
             if prior_rows else "")
    rule_rows = []
    for name, r in (m.get("rules") or {}).items():
        rule_rows.append([f"{name}: {r.get('rule')}", _ci(r, "balanced_accuracy"),
                          _ci(r, "accuracy"), _ci(r, "roc_auc_macro"),
                          ((r.get("malignant") or {}).get("sensitivity"))])
    rules = ('<p class="note">Other decision rules on the same test photos, measured by the '
             "same code; reported only, never served by default.</p>"
             + _table(["rule", "balanced accuracy", "accuracy", "ROC-AUC",
                       "malignant sensitivity"],
                      [["served (photo alone)", _ci(m, "balanced_accuracy"),
                        _ci(m, "accuracy"), _ci(m, "roc_auc_macro"),
                        (m.get("malignant") or {}).get("sensitivity")], *rule_rows])
             if rule_rows else "")
    tau_rows = [[r["tau"], r["accuracy"], r["balanced_accuracy"]]
                for r in d.get("tau_table") or []]
    taus = ("<h3>Validation, by prior shift</h3>"
            + _table(["tau", "val accuracy", "val balanced accuracy"], tau_rows)
            if tau_rows else "")
    return head + table + rules + taus


def _subgroups(m: dict[str, Any]) -> str:
    """Per attribute, each group's served metrics with intervals, and the gap."""
    out = ""
    for key, block in (m.get("subgroups") or {}).items():
        groups = block.get("groups", {})
        rows = [[v, g["support"], g["accuracy"], _ci(g, "balanced_accuracy"),
                 g["malignant_support"], _ci(g, "malignant_sensitivity"),
                 _ci(g, "malignant_specificity")] for v, g in groups.items()]
        gap = block.get("gap")
        gap_html = (f'<p class="note">Gap: {html.escape(str(gap["worst"]))} '
                    f"{_fmt(groups[gap['worst']]['balanced_accuracy'], 3)} vs "
                    f"{html.escape(str(gap['best']))} "
                    f"{_fmt(groups[gap['best']]['balanced_accuracy'], 3)}: "
                    f"<b>{_fmt(gap['difference'], 3)}</b>"
                    + (f" [95% {gap['interval'][0]:.3f}, {gap['interval'][1]:.3f}]"
                       if gap.get("interval") else "")
                    + " balanced accuracy (groups of at "
                    "least 10 images).</p>" if gap else "")
        out += f"<h3>{html.escape(key)}</h3>" + _table(
            [key, "support", "accuracy", "balanced acc. [95%]", "malignant",
             "malignant sens. [95%]", "malignant spec. [95%]"], rows) + gap_html
    return out or '<p class="note">No subgroup metadata in this dataset.</p>'


def _data_section(m: dict[str, Any], classes: list[str]) -> str:
    """Class counts per split, the leak check and pictures under two labels."""
    split = m.get("split", {})
    counts = split.get("counts", {})
    rows = [[c] + [counts.get(sp, {}).get(c, 0) for sp in ("train", "val", "test")]
            for c in classes]
    leak = split.get("group_overlap", 0) or split.get("duplicate_overlap", 0)
    leak_html = (f'<p class="warn">This split leaks: {split.get("group_overlap")} group(s) and '
                 f'{split.get("duplicate_overlap")} identical file(s) cross splits; test '
                 "results are optimistic.</p>" if leak else
                 '<p class="note">Leak check: no lesion/group and no byte-identical file is in '
                 "more than one split.</p>")
    conflicts = split.get("label_conflicts") or {}
    conflict_html = ""
    if conflicts.get("groups"):
        fate = ("left out of training and evaluation" if conflicts.get("policy") == "drop"
                else "kept: the model was trained on contradictory labels")
        conflict_html = (f'<p class="warn">{conflicts["groups"]} picture(s) appear under '
                         f'different labels ({conflicts["files"]} files); {fate} '
                         f'(data.conflicts={html.escape(str(conflicts.get("policy")))}; listed '
                         "in skipped_inputs.json).</p>")
    return f"""
<p class="note">Split: {html.escape(str(split.get('origin', '')))}</p>
{_table(['class', 'train', 'val', 'test'], rows)}{leak_html}{conflict_html}"""


def _malignant_section(m: dict[str, Any]) -> str:
    """The malignant operating point on test, with its intervals."""
    mal = m.get("malignant")
    if mal:
        mi = mal.get("intervals") or {}
        op_rows = [["sensitivity", _ci({"v": mal["sensitivity"],
                                        "intervals": {"v": mi.get("sensitivity")}}, "v")],
                   ["specificity", _ci({"v": mal["specificity"],
                                        "intervals": {"v": mi.get("specificity")}}, "v")],
                   ["AUC of the malignant score", mal.get("auc")],
                   ["true positives / false negatives", f"{mal['tp']} / {mal['fn']}"],
                   ["true negatives / false positives", f"{mal['tn']} / {mal['fp']}"]]
        mal_html = f"""
<p>Flag "possibly malignant" when P({' + '.join(mal['classes'])}) &ge;
<b>{_fmt(mal['threshold'], 3)}</b>, the threshold that reaches sensitivity
{mal['target_sensitivity']:.2f} on validation.</p>
{_table(['on test', 'value'], op_rows)}"""
    else:
        mal_html = '<p class="note">No malignant-suspect classes in this dataset.</p>'
    return mal_html


def _lesions_section(m: dict[str, Any]) -> str | None:
    """The test lesions' measurements per true class (descriptive), or None without masks."""
    lesions = m.get("lesion_measurements")
    if not lesions:
        return None
    rows = [[c, g["n"], g["median_area_share"], g["median_asymmetry"],
             g["median_compactness"], g["median_diameter_px"], g["mean_colours"]]
            for c, g in lesions["per_class"].items()]
    return f"""
<p class="note">The lesion outlines of {lesions['measured']} of the {lesions['test_images']}
test images (their masks, data.masks), measured on the photo and summarised per true class:
median area share of the photo, asymmetry about the two principal axes (0 = mirror-symmetric),
border compactness (1 = a disc), largest diameter in the photo's pixels, and the mean number
of dermoscopic colours covering at least 5% of the lesion (ABCD rule, Stolz et al. 1994).
They describe the outlines; they are not what the model uses and they diagnose nothing.</p>
{_table(['class', 'n', 'area share', 'asymmetry', 'compactness', 'diameter px', 'colours'],
        rows)}"""


def build_report(run_dir: Path) -> str:
    """The report's HTML text."""
    paths = RunPaths(run_dir)
    m = read_metrics(paths)
    config_text = paths.config.read_text() if paths.config.is_file() else ""
    classes: list[str] = m.get("classes", list(m.get("per_class", {})))
    plots = paths.plots
    hist = _history(paths)
    sections = []

    kpis = [("balanced accuracy", "balanced_accuracy"), ("accuracy", "accuracy"),
            ("macro-F1", "macro_f1"), ("ROC-AUC (macro)", "roc_auc_macro"),
            ("ECE (served)", "ece")]
    kpi_html = "".join(f"<div>{html.escape(k)}<b>{_fmt(m.get(key), 3)}</b>"
                       f"<small>{html.escape(_ci(m, key))}</small></div>" for k, key in kpis)
    served = m.get("served") or {}
    sections.append(("summary", "Summary", f"""
<div class="kpi">{kpi_html}</div>
<p class="note">The answer the model serves (<code>dermalab predict</code>, the web page) for
each test photo alone: {html.escape(str(served.get('answer', 'softmax(z / T)')))}, on the
test split ({m.get('n')} images) with {_chosen(m)}. Brackets: 95% intervals over
{served.get('bootstrap', 0)} bootstrap resamples of the test lesions. Backbone
{html.escape(str(m.get('backbone')))} ({html.escape(str(m.get('weights_origin')))} weights),
{m.get('image_size')} px.</p>"""))

    sections.append(("data", "Data", _data_section(m, classes)))

    sections.append(("curves", "Training curves", _curves(paths, m, hist)))

    metric_rows = [[k, _ci(m, k, 4) if k in (m.get("intervals") or {}) else m.get(k)]
                   for k in (*metric_names(), "ece", "ece_split_prior", "uncertain_rate",
                             "answered_accuracy", "loss")]
    pc = m.get("per_class", {})
    pc_rows = [[c, pc[c]["precision"], pc[c]["recall"], pc[c]["f1"], pc[c].get("roc_auc"),
                pc[c]["support"]] for c in classes if c in pc]
    sections.append(("metrics", "Test metrics", _table(["metric", "value"], metric_rows)))
    sections.append(("per-class", "Per-class report",
                     _table(["class", "precision", "recall", "F1", "ROC-AUC", "support"],
                            pc_rows)))
    sections.append(("confusion", "Confusion matrix", '<div class="grid">'
                     + _img(plots / "confusion_matrix.png", "confusion matrix")
                     + _img(plots / "confusion_matrix_normalized.png",
                            "row-normalised confusion matrix") + "</div>"))
    sections.append(("roc", "ROC curves", _img(plots / "roc.png", "ROC curves")))

    sections.append(("decision", "The served decision and other rules", _decision(m)))
    cal_rows = [["ECE (15 bins, top label)", m.get("ece_before"), m.get("ece_after")],
                ["NLL", m.get("nll_before"), m.get("nll_after")]]
    t_warn = (f'<p class="warn">{html.escape(m["temperature_warning"])}</p>'
              if m.get("temperature_warning") else "")
    sections.append(("calibration", "Calibration", f"""
<p class="note">Temperature T = {_fmt(m.get('temperature'), 3)} fitted on validation (never on
test). "Served" is softmax(z / T &minus; &tau; log &pi;), calibrated for the declared class
prior (its ECE weighs each test image by declared share / test share of its class); the
first column is the network's plain softmax(z) on the test split's own class shares.</p>
{t_warn}{_table(['on test', "network's softmax", 'served'], cal_rows)}
{_img(plots / 'reliability.png', 'reliability diagram')}"""))

    sections.append(("malignant", "Malignant operating point", _malignant_section(m)))
    sections.append(("subgroups", "Subgroups", _subgroups(m)))

    lesions = _lesions_section(m)
    if lesions:
        sections.append(("lesions", "Lesion measurements (descriptive)", lesions))

    gal = m.get("gallery") or []
    gal_html = (_img(plots / "misclassified_gradcam.png", "misclassified Grad-CAM gallery")
                + '<p class="note">The test images the model got wrong with the highest '
                "confidence; heat-maps show where it looked for the class it predicted.</p>"
                if gal else '<p class="note">No misclassified test images.</p>')
    sections.append(("gallery", "Misclassified test images (Grad-CAM)", gal_html))
    sections.append(("config", "Configuration", f"<pre>{html.escape(config_text)}</pre>"))

    body = "".join(f'<section id="{sid}"><h2>{html.escape(title)}</h2>{content}</section>'
                   for sid, title, content in sections)
    # The report is for researchers and stays English; its title and disclaimer come from the
    # same catalogue as the web page.
    title = html.escape(t("report.title", "en", name=run_dir.resolve().name))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title><style>{CSS}</style></head>
<body><main><h1>{title}</h1>
<p class="warn">{html.escape(t("report.disclaimer", "en"))}</p>{body}
</main></body></html>"""


def write_report(run_dir: str | Path) -> Path:
    """Write ``RUN_DIR/report.html``."""
    out = RunPaths(Path(run_dir)).report
    atomic_write_text(out, build_report(Path(run_dir)))
    return out
