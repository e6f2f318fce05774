"""Static INT8 quantisation of an exported model (``dermalab export --quantize int8``)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import timm
import torch

from dermalab.core.models import FeaturesAndLogits
from dermalab.deploy.quantize import bias_shifts, correct_biases, quantize_onnx, shape_nodes


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
    quantize_onnx(fp32, int8, [rng.normal(size=(8, 3, 64, 64)).astype(np.float32)
                               for _ in range(4)])
    q = onnx.load(str(int8)).graph
    assert sum(n.op_type == "QuantizeLinear" for n in q.node) > 20  # really quantised
    x = rng.normal(size=(3, 3, 64, 64)).astype(np.float32)
    outs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None,
                                                                                 {"image": x})
            for p in (fp32, int8)]
    assert [o.shape for o in outs[0]] == [o.shape for o in outs[1]]
    assert int8.stat().st_size * 3 < fp32.stat().st_size


def _layers_model(path: Path) -> None:
    """A 1x1 convolution, a grouped 1x1 convolution without a bias, and a classifier: a chain
    whose mean output is exactly linear in the mean input (no activation in between)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.normal(size=shape).astype(np.float32), name)
             for name, shape in (("w1", (8, 4, 1, 1)), ("b1", (8,)), ("w2", (8, 2, 1, 1)),
                                 ("w3", (3, 8)), ("b3", (3,)))]
    nodes = [helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], name="conv"),
             helper.make_node("Conv", ["c1", "w2"], ["c2"], name="grouped", group=4),
             helper.make_node("GlobalAveragePool", ["c2"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "w3", "b3"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "layers", [helper.make_tensor_value_info(
        "image", TensorProto.FLOAT, [None, 4, 6, 6])], [helper.make_tensor_value_info(
            "logits", TensorProto.FLOAT, [None, 3])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_bias_shift_is_the_mean_output_change_of_rounded_weights() -> None:
    """For a 1x1 convolution (grouped or not) and a linear layer the mean output is linear in
    the mean input, so E[(W+dW) x] - E[W x] must equal the shift exactly."""
    from onnx import numpy_helper

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        _layers_model(path)
        graph = onnx.load(str(path)).graph
    w = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    rng = np.random.default_rng(2)
    dq = {k: w[k] + rng.normal(scale=0.05, size=w[k].shape).astype(np.float32)
          for k in ("w1", "w2", "w3")}
    x1 = rng.normal(size=(10, 4, 6, 6)).astype(np.float32)
    x2 = np.abs(rng.normal(size=(10, 8, 6, 6))).astype(np.float32)
    x3 = rng.normal(size=(10, 8)).astype(np.float32)
    means = {"image": x1.mean((0, 2, 3)), "c1": x2.mean((0, 2, 3)), "f": x3.mean(0)}
    shifts = bias_shifts(graph, dq, means)

    def conv1x1(x: np.ndarray, k: np.ndarray, groups: int) -> np.ndarray:
        ci = x.shape[1] // groups
        co = k.shape[0] // groups
        return np.concatenate([np.einsum("nchw,oc->nohw", x[:, g * ci:(g + 1) * ci],
                                         k[g * co:(g + 1) * co, :, 0, 0])
                               for g in range(groups)], axis=1)

    for name, wk, x, groups in (("conv", "w1", x1, 1), ("grouped", "w2", x2, 4)):
        change = (conv1x1(x, dq[wk], groups) - conv1x1(x, w[wk], groups)).mean((0, 2, 3))
        np.testing.assert_allclose(shifts[name], change, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(shifts["fc"], (x3 @ (dq["w3"] - w["w3"]).T).mean(0),
                               rtol=1e-4, atol=1e-5)


def test_bias_correction_removes_the_mean_error_of_the_int8_weights(tmp_path: Path) -> None:
    """After the correction, the model with ONNX Runtime's INT8-rounded weights has the same
    mean logits as the float model on the calibration batches (the bias-less grouped layer
    gains a bias), where without it they differ. Exact here because the chain is linear; with
    activations in between it is exact per layer, not for the whole model."""
    from onnx import numpy_helper
    from onnxruntime.quantization.qdq_loss_debug import create_weight_matching

    fp32, corrected, int8 = (tmp_path / n for n in ("m.onnx", "c.onnx", "q.onnx"))
    _layers_model(fp32)
    rng = np.random.default_rng(3)
    calib = [(rng.normal(size=(4, 4, 6, 6)) + 0.5).astype(np.float32) for _ in range(4)]
    assert correct_biases(fp32, corrected, calib) == 3
    quantize_onnx(fp32, int8, calib, bias_correction=False)
    # The weights only: the biases are rounded too (to int32, a negligible change), and the
    # corrected model's own biases must stay.
    rounded = {k: np.asarray(m["dequantized"])
               for k, m in create_weight_matching(str(fp32), str(int8)).items()
               if k in ("w1", "w2", "w3")}
    assert len(rounded) == 3

    def mean_logits(path: Path, weights: dict[str, np.ndarray]) -> np.ndarray:
        model = onnx.load(str(path))
        for init in model.graph.initializer:
            if init.name in weights:
                init.CopyFrom(numpy_helper.from_array(
                    weights[init.name].reshape(init.dims).astype(np.float32), init.name))
        sess = ort.InferenceSession(model.SerializeToString(),
                                    providers=["CPUExecutionProvider"])
        return np.mean([sess.run(None, {"image": x})[0] for x in calib], axis=(0, 1))

    ref = mean_logits(fp32, {})
    assert np.abs(mean_logits(fp32, rounded) - ref).max() > 1e-4  # rounding moved the mean
    np.testing.assert_allclose(mean_logits(corrected, rounded), ref, atol=2e-6)


@pytest.mark.slow
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
    # Measured again here, independently, on every validation photo: the INT8 model gives the
    # FP32 model's served answer (the page's 98% bar), and the recorded check says the same.
    import csv

    from dermalab.deploy.predictor import Predictor
    from tests.conftest import HAM_DIR

    with open(run / "splits.csv") as f:
        val = [r["sample_id"] for r in csv.DictReader(f) if r["split"] == "val"]
    fp32 = Predictor.load(run / "export")
    int8 = Predictor(fp32.info, onnx_path=run / "export" / "model.int8.onnx")
    images = np.stack([fp32.preprocess(str(HAM_DIR / "images" / f"{i}.jpg")) for i in val])
    p32, p8 = fp32.probabilities(images), int8.probabilities(images)
    agreement = float(np.mean(p32.argmax(1) == p8.argmax(1)))
    assert agreement >= 0.98, agreement
    assert abs(q["top1_agreement"] - agreement) <= 0.05
    assert np.abs(p32 - p8).max() <= max(0.05, 2 * q["max_abs_prob_diff"])


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
    # a lower bar (bench/ondevice.py measures INT8 in the browser whatever its agreement)
    (tmp_path / "model.json").write_text(json.dumps(
        {"extra": {"int8": {"top1_agreement": 0.89}}}))
    assert int8_gate(tmp_path, need=0.0) is None
    (tmp_path / "model.json").write_text(json.dumps({"extra": {}}))
    assert "--quantize int8" in (int8_gate(tmp_path) or "")


def test_sensitivity_is_the_mean_logit_change_and_ranks_layers_within_the_budget() -> None:
    """On the linear chain the logits are linear in each weight, so the mean |change| of the
    logits doubles when the rounding error does and is zero without one; the layer with the
    largest error ranks first, and the 16-bit choice never exceeds its share of the weights."""
    from onnx import numpy_helper

    from dermalab.deploy.quantize import layer_weights, most_sensitive, weight_sensitivity

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        _layers_model(path)
        w = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
        rng = np.random.default_rng(4)
        calib = [rng.normal(size=(4, 4, 6, 6)).astype(np.float32) for _ in range(3)]
        noise = {k: rng.normal(size=w[k].shape).astype(np.float32) for k in ("w1", "w2", "w3")}
        scale = {"w1": 1e-3, "w2": 1e-2, "w3": 1e-4}
        one = weight_sensitivity(path, {k: w[k] + scale[k] * noise[k] for k in noise}, calib)
        two = weight_sensitivity(path, {k: w[k] + 2 * scale[k] * noise[k] for k in noise}, calib)
        none = weight_sensitivity(path, {k: w[k] for k in noise}, calib)
        sizes = layer_weights(path)
    assert sizes == {"w1": 32, "w2": 16, "w3": 24}
    for k in noise:
        assert one[k] > 0 and none[k] == 0
        np.testing.assert_allclose(two[k], 2 * one[k], rtol=1e-3)
    assert max(one, key=one.__getitem__) == "w2"
    assert most_sensitive(one, sizes, 1.0) == sorted(one, key=lambda k: -one[k])
    assert most_sensitive(one, sizes, 16 / 72) == ["w2"]  # exactly its share
    assert most_sensitive(one, sizes, 15 / 72) == []  # w2 does not fit; none smaller as bad
    assert most_sensitive(one, sizes, 0.0) == []


def test_sixteen_bit_activations_and_sensitive_layers_are_what_the_file_holds(
        tmp_path: Path) -> None:
    """The chosen weights are stored as int16 and the others as int8; with 16-bit activations
    every activation is uint16, and the model is closer to FP32 than with 8-bit ones."""
    from onnx import TensorProto

    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=3).eval()
    fp32 = tmp_path / "m.onnx"
    torch.onnx.export(FeaturesAndLogits(model).eval(), (torch.randn(2, 3, 64, 64),), str(fp32),
                      dynamo=False, opset_version=17, input_names=["image"],
                      output_names=["logits", "features", "feature_map"],
                      dynamic_axes={"image": {0: "batch"}})
    rng = np.random.default_rng(0)
    calib = [rng.normal(size=(2, 3, 64, 64)).astype(np.float32) for _ in range(4)]
    x = rng.normal(size=(6, 3, 64, 64)).astype(np.float32)
    ref = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).run(
        ["logits"], {"image": x})[0]
    err = {}
    for bits, share in ((8, 0.0), (16, 0.05)):
        out = tmp_path / f"a{bits}.onnx"
        how = quantize_onnx(fp32, out, calib, activation_bits=bits, sensitive_share=share)
        graph = onnx.load(str(out)).graph
        inits = {i.name: i for i in graph.initializer}
        weight_types = {}
        for n in graph.node:
            if n.op_type == "DequantizeLinear" and n.input[0] in inits:
                weight_types[n.input[0]] = inits[n.input[0]].data_type
        act = {inits[n.input[2]].data_type for n in graph.node
               if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in inits}
        assert act == {TensorProto.UINT16 if bits == 16 else TensorProto.UINT8}
        sixteen = sum(t == TensorProto.INT16 for t in weight_types.values())
        assert sixteen == how["sixteen_bit_layers"] and how["activation_bits"] == bits
        assert (sixteen > 0) == (share > 0)
        assert sum(t == TensorProto.INT8 for t in weight_types.values()) > 20
        assert 0 <= how["sixteen_bit_share"] <= share
        got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(
            ["logits"], {"image": x})[0]
        err[bits] = float(np.abs(got - ref).mean())
    assert err[16] < err[8]


def test_quantize_refuses_other_activation_widths(tmp_path: Path) -> None:
    from dermalab.core.errors import DermalabError

    fp32 = tmp_path / "m.onnx"
    _layers_model(fp32)
    with pytest.raises(DermalabError, match="8 or 16"):
        quantize_onnx(fp32, tmp_path / "q.onnx", [np.zeros((1, 4, 6, 6), np.float32)],
                      activation_bits=4)


def test_calibration_stride_is_the_largest_equal_chunk() -> None:
    from dermalab.deploy.quantize import calibration_stride

    assert [calibration_stride(n, 16) for n in (256, 20, 17, 3, 1)] == [16, 10, 1, 3, 1]


@pytest.mark.parametrize(("bits", "calibrator"), [(8, "HistogramCalibrater"),
                                                 (16, "MinMaxCalibrater")])
def test_calibration_activations_are_binned_in_chunks(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      bits: int, calibrator: str) -> None:
    """ONNX Runtime's calibrators hold every intermediate output they are given until they
    reduce them (256 images of a 256 px model took more than 24 GB in the histogram one): each
    must be given at most CALIBRATION_CHUNK images at a time, and every image exactly once.
    8-bit activations go through the percentile (histogram) calibrator, 16-bit through the
    min-max one."""
    from onnxruntime.quantization import calibrate

    from dermalab.deploy.quantize import CALIBRATION_CHUNK

    cls = getattr(calibrate, calibrator)
    held: list[int] = []
    clear = cls.clear_collected_data

    def counting_clear(self: calibrate.CalibraterBase) -> None:
        if self.intermediate_outputs:  # min-max also clears once more after reducing
            held.append(len(self.intermediate_outputs))
        clear(self)

    monkeypatch.setattr(cls, "clear_collected_data", counting_clear)
    fp32 = tmp_path / "m.onnx"
    _layers_model(fp32)
    rng = np.random.default_rng(0)
    n = 2 * CALIBRATION_CHUNK + 4
    how = quantize_onnx(fp32, tmp_path / "q.onnx",
                        [rng.normal(size=(1, 4, 6, 6)).astype(np.float32) for _ in range(n)],
                        bias_correction=False, sensitive_share=0.0, activation_bits=bits)
    assert sum(held) == n and 0 < max(held) <= CALIBRATION_CHUNK
    assert how["activation_ranges"] == ("min-max" if bits == 16 else "99.99 percentile")


def test_sixteen_bit_activation_ranges_keep_rare_large_values(tmp_path: Path) -> None:
    """With 16-bit activations the ranges are min-max: one input value 30x the typical one
    (1 in 18,432 calibration values, past the 99.99th percentile) still comes out right,
    where percentile ranges, made for 8 bits, clip it."""
    fp32 = tmp_path / "m.onnx"
    _layers_model(fp32)
    rng = np.random.default_rng(0)
    calib = [rng.normal(size=(1, 4, 6, 6)).astype(np.float32) for _ in range(128)]
    calib[0][0, 0, 0, 0] = 30.0
    ref = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).run(
        ["logits"], {"image": calib[0]})[0]
    err = {}
    for bits in (8, 16):
        out = tmp_path / f"q{bits}.onnx"
        quantize_onnx(fp32, out, calib, activation_bits=bits, bias_correction=False,
                      sensitive_share=0.0)
        got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(
            ["logits"], {"image": calib[0]})[0]
        err[bits] = float(np.abs(got - ref).max() / np.abs(ref).max())
    assert err[16] < 0.02 < err[8]
