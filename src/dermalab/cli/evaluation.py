"""``dermalab evaluate``, ``report``, ``export``, ``predict`` and ``explain``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from dermalab.cli.common import add_export_parser
from dermalab.core.errors import DermalabError


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``dermalab evaluate RUN_DIR``."""
    from dermalab.evaluate.evaluate import evaluate_run

    res = evaluate_run(args.run_dir, data=args.data, split=args.split,
                       progress=not args.json, tta=args.tta)
    if args.json:
        print(json.dumps(res))
        return 0
    print(evaluation_text(res))
    return 0


def evaluation_text(res: dict[str, Any]) -> str:
    """``dermalab evaluate``'s screen: the served answers' metrics with their intervals."""
    from dermalab.core.intervals import with_interval

    ci = res.get("intervals") or {}

    def v(key: str) -> str:
        return with_interval(res.get(key), ci.get(key))

    lines = [f"{res['split']} ({res['n']} images from {res['data']}), the served answer for "
             f"each photo alone (tau {res['tau']:.2f}{', with TTA' if res['tta'] else ''}; "
             "95% lesion-grouped intervals):",
             f"  balanced accuracy {v('balanced_accuracy')}, accuracy {v('accuracy')}",
             f"  macro-F1 {v('macro_f1')}, ROC-AUC {v('roc_auc_macro')}",
             f"  calibration: ECE {res['ece_raw']:.4f} (softmax) -> {v('ece')} (served, "
             f"T = {res['temperature']:.3f}), NLL {res['nll_raw']:.4f} -> {res['nll']:.4f}"]
    mal = res.get("malignant")
    if mal and mal.get("sensitivity") is not None:
        lines.append(f"  possibly malignant at {mal['threshold']:.3f}: sensitivity "
                     f"{v('malignant_sensitivity')}, specificity {v('malignant_specificity')}")
    if res.get("with_metadata"):
        w = res["with_metadata"]
        lines.append(f"  with each image's own metadata (not the headline): balanced accuracy "
                     f"{w['balanced_accuracy']:.4f}, accuracy {w['accuracy']:.4f}")
    for c, r in res["per_class"].items():
        lines.append(f"  {c:<10} precision {r['precision']:.3f} recall {r['recall']:.3f} "
                     f"f1 {r['f1']:.3f} support {r['support']}")
    return "\n".join(lines)


def cmd_report(args: argparse.Namespace) -> int:
    """``dermalab report RUN_DIR``: redo calibration/analysis and write report.html."""
    from dermalab.core.runs import RunPaths
    from dermalab.pipeline import finalize_run

    m = finalize_run(args.run_dir, progress=True, serving=True if args.serving else None,
                     eval_overrides=args.set or None)
    print(f"{RunPaths(Path(args.run_dir)).report}: temperature {m['temperature']:.3f}, ECE "
          f"{m['ece_before']:.4f} -> {m['ece_after']:.4f}, NLL {m['nll_before']:.4f} -> "
          f"{m['nll_after']:.4f}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """``dermalab export RUN_DIR --format onnx``."""
    from dermalab.core.runs import RunPaths
    from dermalab.deploy.export import export_run

    meta = export_run(args.run_dir, args.out, args.format)
    out = Path(args.out) if args.out else RunPaths(Path(args.run_dir)).export
    par = meta.get("extra", {}).get("parity")
    if args.format == "onnx" and par:
        print(f"wrote {out / 'model.onnx'} and {out / 'model.json'} (ONNX Runtime vs PyTorch: "
              f"max abs diff {par['max_abs_diff']:.2e}, argmax agreement "
              f"{par['argmax_agreement']:.0%})")
    else:
        print(f"wrote the {args.format} export and model.json to {out}")
    if args.quantize == "int8":
        from dermalab.deploy.quantize import quantize_int8

        q = quantize_int8(args.run_dir, args.out, activation_bits=args.activation_bits)
        print(f"wrote {out / q['file']}: {q['int8_bytes'] / 1e6:.1f} MB, {q['size_ratio']:.1f}x "
              f"smaller (int8 weights, {q['sixteen_bit_layers']} most sensitive layers int16, "
              f"{q['activation_bits']}-bit activations, {q['activation_ranges']} ranges); "
              f"on {q['check_images']} validation "
              f"images top-1 agreement with FP32 "
              f"{q['top1_agreement']:.1%}, max |dp| {q['max_abs_prob_diff']:.3f}, balanced "
              f"accuracy {q['balanced_accuracy_int8']:.3f} (FP32 "
              f"{q['balanced_accuracy_fp32']:.3f})")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """``dermalab predict MODEL IMAGE...``: every good image is analysed; each bad one is named
    on stderr, and the exit code is 2 if any failed."""
    from dermalab.deploy.predictor import Predictor

    predictor = Predictor.load(args.model)
    given = {k: v for k in ("age", "sex", "site") if (v := getattr(args, k)) is not None}
    if given and predictor.metadata_model is None:
        raise DermalabError(f"{args.model}: this model was not fitted with patient metadata "
                            "(eval.metadata); drop --age/--sex/--site, or run `dermalab "
                            "report RUN --set eval.metadata=[age,sex,localization]`")
    row, used = predictor.metadata_row(given)
    results = predictor.predict_each(args.images, top_k=args.top_k, tta=args.tta,
                                     masks_dir=args.masks, metadata=row)
    failed = [r for r in results if "error" in r]
    for r in failed:
        print(f"error: {r['error']}", file=sys.stderr)
    if args.json:
        print(json.dumps(results))
        return 2 if failed else 0
    d = predictor.info.decision
    print(f"model: {predictor.info.backbone} via {predictor.backend}, temperature "
          f"{d.temperature:.3f}, prior shift tau {d.tau:.2f} (decision support, not a "
          "diagnosis)")
    if used:
        print(f"weighing the patient's {', '.join(used)} beside each image")
    for r in results:
        if "error" in r:
            continue
        print(r["image"] + ("   (not sure: the top probability is below "
                            f"{r['uncertain_threshold']:.0%})" if r["uncertain"] else ""))
        for t in r["top"]:
            print(f"  {t['probability']:6.1%}  {t['class']:<8} {t['name']}")
        if "malignant_score" in r:
            t_mal = r["malignant_threshold"]
            line = f"  possibly malignant: {r['malignant_score']:.1%}"
            if t_mal is not None:
                line += f" (operating point {t_mal:.1%})"
            if r["malignant_flag"]:
                line += " -> at or above it: see a dermatologist soon"
            print(line)
    if failed:
        print(f"{len(failed)} of {len(results)} image(s) could not be analysed (listed above)",
              file=sys.stderr)
    return 2 if failed else 0


def cmd_explain(args: argparse.Namespace) -> int:
    """``dermalab explain RUN_DIR [--images ... | --misclassified N]``."""
    from dermalab.evaluate.explain_run import explain_command

    out = explain_command(args.run_dir, images=args.images, misclassified=args.misclassified,
                          method=args.method, target_class=args.target_class, out_dir=args.out)
    print(f"wrote Grad-CAM overlays to {out}")
    return 0


def add_evaluation_parsers(sub: Any) -> None:
    """The parsers of dermalab evaluate, report, export, predict and explain."""
    ev = sub.add_parser("evaluate", help="evaluate a run's best checkpoint")
    ev.add_argument("run_dir", help="a run directory written by `dermalab train`")
    ev.add_argument("--data", help="another dataset with the same classes")
    ev.add_argument("--split", default="test", choices=["train", "val", "test", "all"],
                    help="which part of the split to evaluate")
    ev.add_argument("--tta", action="store_true", help="average over flip views")
    ev.add_argument("--json", action="store_true", help="one JSON object on stdout")
    ev.set_defaults(func=cmd_evaluate)

    rep = sub.add_parser("report", help="calibrate, analyse and write report.html for a run")
    rep.add_argument("run_dir", help="a finished run directory")
    rep.add_argument("--serving", action="store_true", help="also fit the web service's "
                     "'not skin' and 'not sure' detectors (when the run's eval.serving is off)")
    rep.add_argument("--set", nargs="+", metavar="KEY=VALUE", help="evaluation settings to "
                     "analyse with, kept in the run's config (eval.* only, e.g. "
                     "eval.malignant_classes=[mel,bcc])")
    rep.set_defaults(func=cmd_report)

    exp = add_export_parser(sub, "the best model", "a finished run directory", cmd_export)
    exp.add_argument("--quantize", choices=["int8"], help="also write model.int8.onnx: static "
                     "INT8 quantisation calibrated on training images, checked against FP32 "
                     "on validation images (for on-device analysis on phones)")
    exp.add_argument("--activation-bits", type=int, choices=[16, 8], default=16,
                     help="with --quantize int8: activations as uint16 (default; closest to "
                     "FP32) or uint8 (integer kernels: faster in ONNX Runtime on a CPU, "
                     "a few points less agreement with FP32)")

    pr = sub.add_parser("predict", help="top-k calibrated classes for images")
    pr.add_argument("model", help="a run directory or an exported model (folder or .onnx)")
    pr.add_argument("images", nargs="+", help="image files (JPEG, PNG, ...)")
    pr.add_argument("--top-k", type=int, default=3, help="classes shown per image")
    pr.add_argument("--tta", action="store_true", help="average over flips")
    pr.add_argument("--masks", metavar="DIR", help="lesion masks for a model trained with "
                    "data.input other than raw (<stem>_segmentation.png, <stem>_mask.png or "
                    "<stem>.png); images without one are segmented by the model's segmenter")
    pr.add_argument("--age", type=float, help="the patient's age in years (for a model "
                    "fitted with eval.metadata; the same patient for every image)")
    pr.add_argument("--sex", help="the patient's sex (female, male), as --age")
    pr.add_argument("--site", help="the body site of the lesion(s) (e.g. back, face), as --age")
    pr.add_argument("--json", action="store_true", help="one JSON list on stdout")
    pr.set_defaults(func=cmd_predict)

    ex = sub.add_parser("explain", help="Grad-CAM heat-maps")
    ex.add_argument("run_dir", help="a finished run directory")
    group = ex.add_mutually_exclusive_group()
    group.add_argument("--images", nargs="+", help="image files to explain")
    group.add_argument("--misclassified", type=int, default=None, metavar="N",
                       help="the N worst-misclassified test images (default 12)")
    ex.add_argument("--method", default="gradcam", choices=["gradcam", "gradcam++"],
                    help="class-activation method")
    ex.add_argument("--class", dest="target_class", help="explain this class (default: the "
                    "predicted one)")
    ex.add_argument("--out", help="output folder (default RUN_DIR/explain)")
    ex.set_defaults(func=cmd_explain)
