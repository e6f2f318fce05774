"""Static INT8 quantisation of an exported model (``dermalab export --quantize int8``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import timm
import torch

from dermalab.core.models import FeaturesAndLogits
from dermalab.deploy.quantize import quantize_onnx, shape_nodes


def test_tf_same_padding_survives_quantisation(tmp_path: Path) -> None:
    """timm's TF-style convolutions compute their padding from the input's shape; that
    arithmetic must stay in float, or the quantised model pads wrongly and its feature maps
    change size (the failure that cost 11 points of agreement on the clinical model)."""
    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=3).eval()
    fp32, int8 = tmp_path / "m.onnx", tmp_path / "m.int8.onnx"
    torch.onnx.export(FeaturesAndLogits(model).eval(), (torch.randn(2, 3, 64, 64),), str(fp32),
                      dynamo=False, opset_version=17, input_names=["image"],
                      output_names=["logits", "features", "feature_map"],
                      dynamic_axes={"image": {0: "batch"}})
    graph = onnx.load(str(fp32)).graph
    excluded = set(shape_nodes(graph))
    assert excluded and all(n.op_type != "Conv" for n in graph.node if n.name in excluded)
    rng = np.random.default_rng(0)
    quantize_onnx(fp32, int8, iter([rng.normal(size=(8, 3, 64, 64)).astype(np.float32)
                                    for _ in range(4)]))
    q = onnx.load(str(int8)).graph
    assert sum(n.op_type == "QuantizeLinear" for n in q.node) > 20  # really quantised
    x = rng.normal(size=(3, 3, 64, 64)).astype(np.float32)
    outs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None,
                                                                                 {"image": x})
            for p in (fp32, int8)]
    assert [o.shape for o in outs[0]] == [o.shape for o in outs[1]]
    assert int8.stat().st_size * 3 < fp32.stat().st_size


def test_export_quantize_cli(skin_run: Path, tmp_path: Path) -> None:
    """The CLI writes model.int8.onnx beside the FP32 export and records its check on
    validation images in model.json."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(skin_run, run, ignore=shutil.ignore_patterns("history.db", "uploads"))
    proc = subprocess.run([sys.executable, "-m", "dermalab", "export", str(run), "--quantize",
                           "int8"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "top-1 agreement with FP32" in proc.stdout
    q = json.loads((run / "export" / "model.json").read_text())["extra"]["int8"]
    assert (run / "export" / "model.int8.onnx").stat().st_size == q["int8_bytes"]
    assert q["size_ratio"] > 3 and q["check_split"] == "val" and q["check_images"] > 0
    assert 0.0 <= q["max_abs_prob_diff"] <= 1.0
    assert 0.5 <= q["top1_agreement"] <= 1.0


def test_quantize_without_an_export_says_what_to_run(skin_run: Path, tmp_path: Path) -> None:
    import shutil

    from dermalab.core.errors import DermalabError
    from dermalab.deploy.quantize import quantize_int8

    run = tmp_path / "run"
    shutil.copytree(skin_run, run, ignore=shutil.ignore_patterns("export", "history.db",
                                                                 "uploads"))
    with pytest.raises(DermalabError, match="dermalab export"):
        quantize_int8(run)


def test_int8_is_offered_to_the_page_only_when_it_agrees_with_fp32(tmp_path: Path) -> None:
    from dermalab.serve.ondevice import INT8_MIN_AGREEMENT, int8_gate

    (tmp_path / "model.onnx").write_bytes(b"fp32")
    assert int8_gate(tmp_path) is None  # no INT8 export: nothing to say
    (tmp_path / "model.int8.onnx").write_bytes(b"int8")
    for agreement, offered in ((0.89, False), (INT8_MIN_AGREEMENT, True), (1.0, True)):
        (tmp_path / "model.json").write_text(json.dumps(
            {"extra": {"int8": {"top1_agreement": agreement}}}))
        note = int8_gate(tmp_path)
        assert (note is None) == offered, note
        if not offered:
            assert "89.0%" in note and "FP32" in note
    (tmp_path / "model.json").write_text(json.dumps({"extra": {}}))
    assert "--quantize int8" in (int8_gate(tmp_path) or "")
