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
.kpi b{display:block;font-size:1.4rem} img{max-width:100%;height:auto}
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


def build_report(run_dir: Path) -> str:
    """The report's HTML text."""
    paths = RunPaths(run_dir)
    m = read_metrics(paths)
    config_text = paths.config.read_text() if paths.config.is_file() else ""
    classes: list[str] = m.get("classes", list(m.get("per_class", {})))
    plots = paths.plots
    hist = _history(paths)
    sections = []

    kpis = [("balanced accuracy", m.get("balanced_accuracy")), ("accuracy", m.get("accuracy")),
            ("macro-F1", m.get("macro_f1")), ("ROC-AUC (macro)", m.get("roc_auc_macro")),
            ("ECE after T", m.get("ece_after"))]
    kpi_html = "".join(f"<div>{html.escape(k)}<b>{_fmt(v, 3)}</b></div>" for k, v in kpis)
    sections.append(("summary", "Summary", f"""
<div class="kpi">{kpi_html}</div>
<p class="note">Test split ({m.get('n')} images) evaluated with {_chosen(m)}.
Backbone {html.escape(str(m.get('backbone')))}
({html.escape(str(m.get('weights_origin')))} weights), {m.get('image_size')} px.</p>"""))

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
    sections.append(("data", "Data", f"""
<p class="note">Split: {html.escape(str(split.get('origin', '')))}</p>
{_table(['class', 'train', 'val', 'test'], rows)}{leak_html}{conflict_html}"""))

    curve_imgs = "".join(_img(plots / f"{n}.png", n) for n in
                         ("loss", "accuracy", "balanced_accuracy", "macro_f1", "precision",
                          "recall", "lr"))
    hist_rows = [[r["epoch"], float(r["lr"]), float(r["train_loss"]), float(r["val_loss"]),
                  float(r["val_balanced_accuracy"]), float(r["val_macro_f1"])] for r in hist]
    sections.append(("curves", "Training curves", f"""<div class="grid">{curve_imgs}</div>
{_table(['epoch', 'lr', 'train loss', 'val loss', 'val bal-acc', 'val macro-F1'], hist_rows)}"""))

    metric_rows = [[k, m.get(k)] for k in ("accuracy", "balanced_accuracy", "macro_f1",
                                           "weighted_precision", "weighted_recall",
                                           "weighted_f1", "roc_auc_macro", "loss")]
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

    cal_rows = [["ECE (15 bins, top label)", m.get("ece_before"), m.get("ece_after")],
                ["NLL", m.get("nll_before"), m.get("nll_after")]]
    tta = m.get("tta")
    tta_html = ""
    if tta:
        tta_html = _table(["test-time augmentation", "without", f"with ({tta['views']} flips)"],
                          [["accuracy", tta["accuracy_without"], tta["accuracy"]],
                           ["balanced accuracy", tta["balanced_accuracy_without"],
                            tta["balanced_accuracy"]],
                           ["ECE after T", tta["ece_after_without"], tta["ece_after"]]])
    la = m.get("logit_adjustment")
    if la:
        tta_html += (
            f'<p class="note">Logit adjustment (Menon et al. 2021), a decision rule for '
            f"balanced accuracy: predict argmax(logit &minus; &tau; log prior), &tau; = "
            f"{_fmt(la['tau'], 1)} chosen on validation. Reported only: the model's answers "
            f"and probabilities stay the plain ones.</p>"
            + _table(["logit adjustment", "plain argmax", f"\u03c4 = {_fmt(la['tau'], 1)}"],
                     [["validation balanced accuracy", la["val_balanced_accuracy_without"],
                       la["val_balanced_accuracy"]],
                      ["test balanced accuracy", la["balanced_accuracy_without"],
                       la["balanced_accuracy"]],
                      ["test accuracy", la["accuracy_without"], la["accuracy"]]]))
    mf = m.get("metadata_fusion")
    if mf:
        tta_html += (
            f'<p class="note">Patient metadata ({html.escape(", ".join(mf["fields"]))}) weighed '
            f"beside the image: logits / T + w &middot; (log p(class | metadata) &minus; log "
            f"prior), the metadata model fitted on the training split, w = "
            f"{_fmt(mf['weight'], 2)} on validation NLL. The served model uses it when a user "
            f"gives any of them; {mf['test_images_with_metadata']} test images had some.</p>"
            + _table(["on test", "image only", "image + metadata"],
                     [["balanced accuracy", mf["balanced_accuracy_without"],
                       mf["balanced_accuracy"]],
                      ["accuracy", mf["accuracy_without"], mf["accuracy"]],
                      ["macro ROC-AUC", mf["roc_auc_macro_without"], mf["roc_auc_macro"]],
                      ["NLL", mf["nll_without"], mf["nll"]],
                      ["validation balanced accuracy", mf["val_balanced_accuracy_without"],
                       mf["val_balanced_accuracy"]]]
                     + ([["malignant sensitivity (same threshold)",
                          mf["malignant_sensitivity_without"], mf["malignant_sensitivity"]],
                         ["malignant specificity (same threshold)",
                          mf["malignant_specificity_without"], mf["malignant_specificity"]]]
                        if "malignant_sensitivity" in mf else [])))
    t_warn = (f'<p class="warn">{html.escape(m["temperature_warning"])}</p>'
              if m.get("temperature_warning") else "")
    sections.append(("calibration", "Calibration", f"""
<p class="note">Temperature T = {_fmt(m.get('temperature'), 3)} fitted on validation (never on
test); probabilities shown anywhere the model is used are softmax(logits / T).</p>
{t_warn}{_table(['on test', 'before', 'after'], cal_rows)}
{_img(plots / 'reliability.png', 'reliability diagram')}{tta_html}"""))

    mal = m.get("malignant")
    if mal:
        op_rows = [["sensitivity", mal["sensitivity"]], ["specificity", mal["specificity"]],
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
    sections.append(("malignant", "Malignant operating point", mal_html))

    sub_html = ""
    for key, groups in (m.get("subgroups") or {}).items():
        rows = [[v, g["support"], g["accuracy"], g["balanced_accuracy"],
                 g["malignant_support"], g["malignant_sensitivity"]] for v, g in groups.items()]
        sub_html += f"<h3>{html.escape(key)}</h3>" + _table(
            [key, "support", "accuracy", "balanced acc.", "malignant", "malignant sens."], rows)
    sections.append(("subgroups", "Subgroups",
                     sub_html or '<p class="note">No subgroup metadata in this dataset.</p>'))

    lesions = m.get("lesion_measurements")
    if lesions:
        pcm = lesions["per_class"]
        rows = [[c, g["n"], g["median_area_share"], g["median_asymmetry"],
                 g["median_compactness"], g["median_diameter_px"], g["mean_colours"]]
                for c, g in pcm.items()]
        sections.append(("lesions", "Lesion measurements (descriptive)", f"""
<p class="note">The lesion outlines of {lesions['measured']} of the {lesions['test_images']}
test images (their masks, data.masks), measured on the photo and summarised per true class:
median area share of the photo, asymmetry about the two principal axes (0 = mirror-symmetric),
border compactness (1 = a disc), largest diameter in the photo's pixels, and the mean number
of dermoscopic colours covering at least 5% of the lesion (ABCD rule, Stolz et al. 1994).
They describe the outlines; they are not what the model uses and they diagnose nothing.</p>
{_table(['class', 'n', 'area share', 'asymmetry', 'compactness', 'diameter px', 'colours'],
        rows)}"""))

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
