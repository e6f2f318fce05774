"""A smaller model for phones: static quantisation of the exported ONNX model with ONNX
Runtime's quantisation tools.

Weights become int8 per output channel, except the most sensitive layers' (int16), and
activations uint16 per tensor (uint8 with ``activation_bits=8``), in the QDQ format
(QuantizeLinear/DequantizeLinear pairs). The file is about 3.4x smaller than FP32. The method:

- the nodes that compute "same" padding from tensor shapes (:func:`shape_nodes`) stay in float;
- 8-bit activation ranges from the 99.99th percentile of calibration values (16-bit ones from
  the min-max range);
- empirical bias correction (Nagel et al. 2019, :func:`correct_biases`): each layer's bias
  absorbs the mean shift its weight rounding causes, measured on calibration images;
- mixed precision: int16 weights for the layers whose rounding alone moves the logits most
  (:func:`weight_sensitivity`), as many as fit in 3% of the weights.

What each step bought (top-1 agreement with FP32 on validation), and why chosen layers are not
simply left in float, is in ``docs/decisions/2026-11-29-int8-quantisation.md``.

The ranges and the sensitivities are measured on training images — never validation or test,
which then measure what the quantisation costs: agreement of the top class with the FP32
model, the largest change of a calibrated probability, and balanced accuracy of both,
recorded in ``model.json`` under ``extra.int8``.

Jacob et al., "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-
Only Inference", CVPR 2018 (the affine scheme ONNX's QuantizeLinear implements).
Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias Correction", ICCV
2019, section 4.2 (bias correction; the empirical variant with calibration data).
Dong et al., "HAWQ: Hessian AWare Quantization of Neural Networks with Mixed-Precision", ICCV
2019 (per-layer sensitivity decides which layers get more bits).
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dermalab.core.atomic import atomic_path, atomic_write_text
from dermalab.core.errors import DermalabError
from dermalab.core.runs import load_run
from dermalab.data.images import normalize_batch
from dermalab.data.prepare import prepare_data
from dermalab.deploy.serving import cached_batches

INT8_NAME = "model.int8.onnx"
#: Activation ranges of 8-bit activations: this percentile of the calibration values (16-bit
#: activations take the min-max range; module docstring).
PERCENTILE = 99.99
#: Calibration images the per-layer sensitivity is measured on.
SENSITIVITY_IMAGES = 32
#: Defaults of ``export --quantize int8`` (module docstring: what each bought).
ACTIVATION_BITS = 16
SENSITIVE_SHARE = 0.03
#: Calibration images whose activations are held in memory at once. ONNX Runtime's histogram
#: calibrator keeps every intermediate output of every image it is given before it bins them:
#: 256 images of a 256 px EfficientNet-Lite0 took more than 24 GB. Given in chunks, it bins
#: each chunk into the running histograms (the bins widen when a chunk exceeds their range).
CALIBRATION_CHUNK = 16


def calibration_stride(n: int, chunk: int = CALIBRATION_CHUNK) -> int:
    """The largest chunk size ``<= chunk`` that divides ``n`` (ONNX Runtime's strided
    calibration wants equal chunks)."""
    return max(k for k in range(1, min(chunk, n) + 1) if n % k == 0)


def shape_nodes(graph: Any) -> list[str]:
    """Names of the nodes downstream of a ``Shape`` op up to the op that consumes the computed
    shape (``Pad``, ``Reshape``, ``Slice``, ``Expand``): shape arithmetic, not image data."""
    consumers: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    found: set[str] = set()
    todo = [n for n in graph.node if n.op_type == "Shape"]
    while todo:
        n = todo.pop()
        if n.name in found:
            continue
        found.add(n.name)
        for o in n.output:
            todo += [c for c in consumers.get(o, [])
                     if c.op_type not in ("Pad", "Reshape", "Slice", "Expand")]
    return sorted(found)


def _attr(node: Any, name: str, default: int) -> int:
    import onnx

    return next((int(onnx.helper.get_attribute_value(a)) for a in node.attribute
                 if a.name == name), default)


def input_means(model_path: Path, nodes: Sequence[Any],
                calibration: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Mean of every channel of each node's first input over ``calibration`` (every position
    of the tensor the node receives, so a preceding Pad's zeros count): ``E[x_c]`` of the
    float model."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(model_path))
    wanted = {n.input[0] for n in nodes}
    outputs = {o.name for o in model.graph.output} | {i.name for i in model.graph.input}
    for name in sorted(wanted - outputs):
        if name not in outputs:
            model.graph.output.append(onnx.helper.make_tensor_value_info(
                name, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    input_name = sess.get_inputs()[0].name
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for x in calibration:
        values = dict(zip(names, sess.run(None, {input_name: x}), strict=True))
        values[input_name] = x
        for name in wanted:
            v = values[name]
            sums[name] = sums.get(name, 0) + v.sum(axis=(0, *range(2, v.ndim)),
                                                   dtype=np.float64)
            counts[name] = counts.get(name, 0) + v.size // v.shape[1]
    return {name: (total / counts[name]).astype(np.float32) for name, total in sums.items()}


def bias_shifts(graph: Any, dequantized: dict[str, np.ndarray],
                means: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The mean output change that weight rounding causes in each Conv/Gemm, per output
    channel: ``E[(W_q - W) x] = (W_q - W) E[x]`` (summed over the kernel for a convolution,
    within its group for a grouped one). Keys are the nodes' names."""
    from onnx import numpy_helper

    weights = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    shifts: dict[str, np.ndarray] = {}
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm") or node.input[1] not in dequantized:
            continue
        w = weights[node.input[1]]
        dw = dequantized[node.input[1]].reshape(w.shape) - w
        mu = means[node.input[0]]
        if node.op_type == "Gemm":
            shifts[node.name] = dw @ mu if _attr(node, "transB", 0) else mu @ dw
        else:
            groups = _attr(node, "group", 1)
            out, per_group = dw.shape[:2]
            per = dw.sum(axis=tuple(range(2, dw.ndim))).reshape(groups, out // groups, per_group)
            shifts[node.name] = np.einsum("gop,gp->go", per,
                                          mu.reshape(groups, per_group)).reshape(out)
    return shifts


def int8_weights(pre: Path, calibration: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """The weights as ONNX Runtime's quantiser rounds them (symmetric per-channel int8,
    dequantised back to float), by weight name. They depend only on the weights, so one
    calibration image suffices to run the quantiser."""
    from onnxruntime.quantization.qdq_loss_debug import create_weight_matching

    with tempfile.TemporaryDirectory() as tmp:
        weights_only = Path(tmp) / "weights.onnx"
        _quantize(pre, weights_only, calibration[:1], percentile=False)
        matching = create_weight_matching(str(pre), str(weights_only))
    return {name: np.asarray(m["dequantized"]) for name, m in matching.items()}


def layer_weights(pre: Path) -> dict[str, int]:
    """The Conv/Gemm weight tensors of the model and their sizes (elements)."""
    import onnx

    graph = onnx.load(str(pre)).graph
    sizes = {i.name: int(np.prod(i.dims)) for i in graph.initializer}
    return {n.input[1]: sizes[n.input[1]] for n in graph.node
            if n.op_type in ("Conv", "Gemm") and n.input[1] in sizes}


def weight_sensitivity(pre: Path, rounded: dict[str, np.ndarray],
                       calibration: Sequence[np.ndarray]) -> dict[str, float]:
    """How much rounding each layer's weights alone moves the output: the mean absolute
    change of the first output (the logits) over ``calibration`` when that one weight tensor
    is replaced by its int8-rounded version and every other stays float (the per-layer
    sensitivity analysis of mixed-precision quantisation, e.g. Dong et al., HAWQ, ICCV 2019,
    with the measured output change in place of the Hessian)."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    def logits(model: Any) -> np.ndarray:
        sess = ort.InferenceSession(model.SerializeToString(),
                                    providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return np.concatenate([sess.run([sess.get_outputs()[0].name], {name: x})[0]
                               for x in calibration])

    model = onnx.load(str(pre))
    inits = {i.name: i for i in model.graph.initializer}
    ref = logits(model)
    out: dict[str, float] = {}
    for name in layer_weights(pre):
        if name not in rounded:
            continue
        original = onnx.TensorProto()
        original.CopyFrom(inits[name])
        inits[name].CopyFrom(numpy_helper.from_array(
            rounded[name].reshape(original.dims).astype(np.float32), name))
        out[name] = float(np.abs(logits(model) - ref).mean())
        inits[name].CopyFrom(original)
    return out


def most_sensitive(sensitivity: dict[str, float], sizes: dict[str, int],
                   share: float) -> list[str]:
    """The layers to keep at 16 bits: the most sensitive first, as long as their weights
    together stay within ``share`` of all the layers' weights (so the file grows by at most
    that share of the INT8 size)."""
    budget = share * sum(sizes.values())
    chosen: list[str] = []
    used = 0
    for name in sorted(sensitivity, key=lambda n: -sensitivity[n]):
        if used + sizes[name] <= budget:
            chosen.append(name)
            used += sizes[name]
    return chosen


def correct_biases(pre: Path, out: Path, calibration: Sequence[np.ndarray], *,
                   rounded: dict[str, np.ndarray] | None = None,
                   keep: Sequence[str] = ()) -> int:
    """Write ``pre`` to ``out`` with each Conv/Gemm bias lowered by the mean shift its INT8
    weights will cause (:func:`bias_shifts`), so the quantised layer's mean output matches
    the float one's: ``b' = b - (W_q - W) E[x]``. Returns how many biases were corrected.

    ``W_q`` are ``rounded`` (default: :func:`int8_weights`); the weights in ``keep`` will be
    16-bit, whose rounding error is 256 times smaller, and are left alone.
    """
    import onnx
    from onnx import numpy_helper

    dequantized = dict(rounded if rounded is not None else int8_weights(pre, calibration))
    for name in keep:
        dequantized.pop(name, None)
    model = onnx.load(str(pre))
    graph = model.graph
    layers = [n for n in graph.node if n.op_type in ("Conv", "Gemm")]
    shifts = bias_shifts(graph, dequantized, input_means(pre, layers, calibration))
    inits = {i.name: i for i in graph.initializer}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    for node in layers:
        if node.name not in shifts:
            continue
        shift = shifts[node.name].astype(np.float32)
        has_bias = len(node.input) > 2 and bool(node.input[2])
        bias = numpy_helper.to_array(inits[node.input[2]]) if has_bias else np.zeros_like(shift)
        if has_bias and uses[node.input[2]] == 1:
            inits[node.input[2]].CopyFrom(numpy_helper.from_array(bias - shift, node.input[2]))
            continue
        # No bias, or one shared with another layer: this layer gets a bias of its own.
        name = f"{node.name}_corrected_bias"
        graph.initializer.append(numpy_helper.from_array(bias - shift, name))
        while len(node.input) < 3:
            node.input.append("")
        node.input[2] = name
    onnx.save(model, str(out))
    return len(shifts)


def _sixteen_bit_overrides(model: Any, names: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """ONNX Runtime's per-tensor overrides that make the weights ``names`` int16 per output
    channel (the axis the quantiser itself uses: 0 for a Conv and a Gemm with ``transB``)."""
    from onnxruntime.quantization import QuantType

    wanted = set(names)
    dims = {i.name: list(i.dims) for i in model.graph.initializer}
    out: dict[str, list[dict[str, Any]]] = {}
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm") or node.input[1] not in wanted:
            continue
        axis = 0 if node.op_type == "Conv" or _attr(node, "transB", 0) else 1
        channels = dims[node.input[1]][axis]
        out[node.input[1]] = ([{"quant_type": QuantType.QInt16, "axis": axis}]
                              + [{"quant_type": QuantType.QInt16}] * (channels - 1))
    return out


def _quantize(model: Path, target: Path, calibration: Sequence[np.ndarray], *,
              percentile: bool | None = None, activation_bits: int = 8,
              sixteen_bit: Sequence[str] = ()) -> str:
    """Quantise ``model`` into ``target``; the activation ranges are :data:`PERCENTILE` ones
    for 8-bit activations and min-max for 16-bit (module docstring) unless ``percentile``
    says. Returns which ranges were used."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        """The calibration batches, one chunk (``set_range``) at a time."""

        def __init__(self) -> None:
            self.batches = iter(calibration)

        def __len__(self) -> int:
            return len(calibration)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.batches = iter(calibration[start_index:end_index])

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.batches, None)
            return None if x is None else {"image": x}

    if percentile is None:
        percentile = activation_bits == 8
    graph = onnx.load(str(model))
    extra: dict[str, Any] = {"CalibStridedMinMax": calibration_stride(len(calibration))}
    if percentile:
        extra["CalibPercentile"] = PERCENTILE
    if sixteen_bit:
        extra["TensorQuantOverrides"] = _sixteen_bit_overrides(graph, sixteen_bit)
    # The calibrator prints its progress; the CLI reports the result instead.
    with contextlib.redirect_stdout(io.StringIO()):
        quantize_static(str(model), str(target), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True,
                        activation_type=(QuantType.QUInt16 if activation_bits == 16
                                         else QuantType.QUInt8),
                        weight_type=QuantType.QInt8,
                        calibrate_method=(CalibrationMethod.Percentile if percentile
                                          else CalibrationMethod.MinMax),
                        extra_options=extra, nodes_to_exclude=shape_nodes(graph.graph))
    return f"{PERCENTILE} percentile" if percentile else "min-max"


def quantize_onnx(fp32: Path, int8: Path, calibration: Sequence[np.ndarray], *,
                  bias_correction: bool = True, activation_bits: int = ACTIVATION_BITS,
                  sensitive_share: float = SENSITIVE_SHARE) -> dict[str, Any]:
    """Quantise ``fp32`` into ``int8`` (written atomically), calibrating the activation
    ranges on the normalised ``(N, C, S, S)`` batches of ``calibration`` (all the same
    shape: the percentile calibrator of 8-bit activations stacks them).

    Before that, unless turned off: the most sensitive layers' weights (up to
    ``sensitive_share`` of all weights, :func:`most_sensitive`) are kept at 16 bits, and the
    other layers' biases are corrected for their weights' rounding on the same batches.
    ``activation_bits`` 16 quantises activations to uint16 with min-max ranges instead of
    uint8 with :data:`PERCENTILE` ranges.

    Returns what was done: the activation ranges, the 16-bit layers and their share of the
    weights.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not calibration:
        raise DermalabError(f"{fp32}: no calibration images to quantise with")
    if activation_bits not in (8, 16):
        raise DermalabError(f"activation bits must be 8 or 16, not {activation_bits}")
    with tempfile.TemporaryDirectory() as tmp, atomic_path(int8) as target:
        pre = Path(tmp) / "pre.onnx"
        # Shape inference and graph clean-up first, as ONNX Runtime's docs advise.
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        sizes = layer_weights(pre)
        keep: list[str] = []
        rounded = None
        if sensitive_share > 0 or bias_correction:
            rounded = int8_weights(pre, calibration)
        if sensitive_share > 0 and rounded is not None:
            # a subset of the images: the ranking costs one pass over them per layer
            sens = weight_sensitivity(pre, rounded, calibration[:SENSITIVITY_IMAGES])
            keep = most_sensitive(sens, sizes, sensitive_share)
        if bias_correction:
            corrected = Path(tmp) / "corrected.onnx"
            correct_biases(pre, corrected, calibration, rounded=rounded, keep=keep)
            pre = corrected
        ranges = _quantize(pre, target, calibration, activation_bits=activation_bits,
                           sixteen_bit=keep)
    total = sum(sizes.values())
    return {"activation_bits": activation_bits, "activation_ranges": ranges,
            "sixteen_bit_layers": len(keep),
            "sixteen_bit_share": sum(sizes[k] for k in keep) / total if total else 0.0}


def quantize_int8(run_dir: str | Path, out_dir: str | Path | None = None, *,
                  calibration_images: int = 256, check_images: int = 400, seed: int = 0,
                  bias_correction: bool = True, activation_bits: int = ACTIVATION_BITS,
                  sensitive_share: float = SENSITIVE_SHARE, progress: bool = False
                  ) -> dict[str, Any]:
    """Write ``model.int8.onnx`` beside the run's ``model.onnx`` export and record its check.

    Args:
        run_dir: a finished run with an ONNX export (``dermalab export`` first).
        out_dir: the export folder (default ``RUN_DIR/export``).
        calibration_images: training images whose activations set the ranges.
        check_images: validation images on which INT8 is compared with FP32.
        bias_correction: correct the biases for the weights' rounding (see the module).
        activation_bits: 16 (uint16 activations, the default) or 8.
        sensitive_share: the share of the weights that may stay 16-bit, given to the most
            sensitive layers (0: every weight int8).

    Returns:
        ``extra.int8`` of ``model.json``: sizes, and on validation the top-1 agreement, the
        largest probability change and both balanced accuracies.

    Raises:
        DermalabError: no FP32 export to quantise.
    """
    import onnxruntime as ort
    from sklearn.metrics import balanced_accuracy_score

    run = load_run(run_dir, command="export")
    out = Path(out_dir) if out_dir else run.paths.export
    fp32 = out / "model.onnx"
    if not fp32.is_file() or not (out / "model.json").is_file():
        raise DermalabError(f"{out}: no model.onnx/model.json to quantise; run `dermalab "
                            f"export {run_dir}` first")
    info = run.info
    data = prepare_data(run.config.data, info.image_size, split_path=run.paths.splits,
                        progress=progress, write=False)
    rng = np.random.default_rng(seed)

    def pick(split: str, n: int) -> list[str]:
        ids = [s.sample_id for s in data.samples(split)]
        return [ids[i] for i in sorted(rng.choice(len(ids), min(n, len(ids)), replace=False))]

    calib_ids = pick("train", calibration_images)
    val = data.samples("val")
    check = pick("val", check_images)
    index = {c: i for i, c in enumerate(info.classes)}
    labels = {s.sample_id: index[s.label] for s in val}

    int8 = out / INT8_NAME
    # One image per batch: the percentile calibrator stacks the batches it sees, so they must
    # all be the same size. Kept in memory (256 x 3 x 192 x 192 floats: 113 MB), as the bias
    # correction and the calibration both read them.
    how = quantize_onnx(fp32, int8, [normalize_batch(x, info.mean, info.std)
                                     for x in cached_batches(data, calib_ids, batch=1)],
                        bias_correction=bias_correction, activation_bits=activation_bits,
                        sensitive_share=sensitive_share)

    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
                for p in (fp32, int8)]
    probs: list[list[np.ndarray]] = [[], []]
    for images in cached_batches(data, check, batch=16):
        x = normalize_batch(images, info.mean, info.std)
        for k, sess in enumerate(sessions):
            # the served probabilities: INT8 must agree with FP32 on the served answer
            probs[k].append(info.decision.probabilities(sess.run(["logits"], {"image": x})[0]))
    p32, p8 = np.concatenate(probs[0]), np.concatenate(probs[1])
    y = np.array([labels[s] for s in check])
    result = {
        "file": INT8_NAME,
        "fp32_bytes": fp32.stat().st_size,
        "int8_bytes": int8.stat().st_size,
        "size_ratio": fp32.stat().st_size / int8.stat().st_size,
        "calibration": f"{len(calib_ids)} training images ({how['activation_ranges']})",
        "bias_correction": bias_correction,
        **how,
        "check_split": "val",
        "check_images": len(check),
        "top1_agreement": float(np.mean(p32.argmax(1) == p8.argmax(1))),
        "max_abs_prob_diff": float(np.abs(p32 - p8).max()),
        "balanced_accuracy_fp32": float(balanced_accuracy_score(y, p32.argmax(1))),
        "balanced_accuracy_int8": float(balanced_accuracy_score(y, p8.argmax(1))),
    }
    meta = json.loads((out / "model.json").read_text())
    meta.setdefault("extra", {})["int8"] = result
    atomic_write_text(out / "model.json", json.dumps(meta, indent=2))
    return result
