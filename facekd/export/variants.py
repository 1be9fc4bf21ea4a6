"""The exported variants of one face model: fp32 (``export_onnx``), fp16 (float16 weights and
activations, float32 inputs/outputs) and int8 (onnxruntime static quantisation).

int8 recipes (``INT8_RECIPES``), all with per-channel int8 weights, uint8 activations, MinMax
calibration and onnxruntime's ``quant_pre_process`` (shape inference + graph optimisation) first:

* ``int8`` (the default): QOperator format (QLinearConv...), grouped/depthwise convolutions kept
  in float (their weights stored as float16, cast once when the session loads). Measured on an AVX-512 VNNI CPU with onnxruntime 1.32, MobileFaceNet's depthwise convs
  run slower in int8 than in float, and PRelu (33 of them in mbf) has no int8 kernel, so every
  quantised conv is followed by a dequantise; keeping the depthwise convs in float is what makes
  int8 faster than fp32 at batch 1.
* ``int8_qdq``: the plain recipe, QDQ format with every conv quantised (portable: other runtimes
  read QDQ); slower than fp32 on that CPU.
* ``int8_qop_full``: QOperator with every conv quantised (the other plain recipe).
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx

from facekd.export.errors import ExportInputError
from facekd.log import get_logger

log = get_logger(__name__)

FP_PRECISIONS = ("fp32", "fp16")
CALIB_BATCH = 8
"""Calibration images per onnxruntime run; ranges are merged every few runs to bound memory."""


@dataclass(frozen=True)
class Int8Recipe:
    """How one int8 variant is quantised."""

    name: str
    quant_format: str  # "qoperator" | "qdq"
    per_channel: bool
    keep_grouped_float: bool
    description: str


INT8_RECIPES: dict[str, Int8Recipe] = {
    "int8": Int8Recipe("int8", "qoperator", True, True,
                       "QOperator, per-channel weights, grouped/depthwise convs computed in float "
                       "(their weights stored float16)"),
    "int8_qdq": Int8Recipe("int8_qdq", "qdq", True, False, "QDQ, per-channel weights, every conv quantised"),
    "int8_qop_full": Int8Recipe("int8_qop_full", "qoperator", True, False,
                                "QOperator, per-channel weights, every conv quantised"),
}
PRECISIONS = FP_PRECISIONS + tuple(INT8_RECIPES)


def parse_precisions(text: str) -> list[str]:
    """``"fp32,int8"`` -> ["fp32", "int8"]; unknown names are an ``ExportInputError``."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in PRECISIONS]
    if bad or not names:
        raise ExportInputError(f"--precision {text!r}: unknown {', '.join(bad) or 'empty list'}; "
                               f"choose from {', '.join(PRECISIONS)}")
    return list(dict.fromkeys(names))


def is_int8(precision: str) -> bool:
    """Whether ``precision`` names an int8 recipe (it then needs calibration images)."""
    return precision in INT8_RECIPES


def _atomic_save(model: onnx.ModelProto, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        onnx.save(model, tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def convert_fp16(src: str | Path, dst: str | Path) -> Path:
    """float16 weights and activations; inputs and outputs stay float32, so callers do not change."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    half = convert_float_to_float16(model, keep_io_types=True)  # onnxruntime loads it (OnnxBackbone checks)
    return _atomic_save(half, Path(dst))


def grouped_conv_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the Conv nodes with group > 1 (depthwise and grouped convolutions)."""
    names = []
    for node in model.graph.node:
        if node.op_type == "Conv":
            group = next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "group"), 1)
            if group > 1:
                names.append(node.name)
    return names


class _Reader:
    """onnxruntime ``CalibrationDataReader`` over normalised float32 batches."""

    def __init__(self, input_name: str, batches: list[np.ndarray]) -> None:
        self.input_name = input_name
        self._batches = batches
        self._it: Iterator[np.ndarray] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._it, None)
        return None if x is None else {self.input_name: x}

    def rewind(self) -> None:
        self._it = iter(self._batches)


def compact_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rename every internal tensor to a short id and drop node names (graph inputs and outputs
    keep theirs): quantisation adds long suffixed names that weigh a lot in a small model's file."""
    graph = model.graph
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    mapping: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        if name not in mapping:
            mapping[name] = format(len(mapping), "x")
        return mapping[name]

    for init in graph.initializer:
        init.name = short(init.name)
    for node in graph.node:
        node.name = ""
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]
    for info in graph.value_info:
        info.name = short(info.name)
    return model


def float16_weights_for_float_convs(model: onnx.ModelProto) -> int:
    """Store the weights of convolutions left in float as float16 behind a Cast to float32:
    onnxruntime folds the Cast when the session loads, so the convolution runs exactly as before
    (a DequantizeLinear there was measured not to be folded, and slowed the graph by a quarter)
    while the file shrinks. Returns how many convolutions were rewritten."""
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    casts = []
    for node in graph.node:
        if node.op_type != "Conv" or len(node.input) < 2:
            continue
        w = inits.get(node.input[1])
        if w is None or w.data_type != onnx.TensorProto.FLOAT or uses.get(w.name, 0) != 1:
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(w).astype(np.float16), w.name + "_fp16")
        graph.initializer.remove(w)
        graph.initializer.append(half)
        casts.append(helper.make_node("Cast", [half.name], [w.name], to=onnx.TensorProto.FLOAT))
    if casts:
        nodes = casts + list(graph.node)
        del graph.node[:]
        graph.node.extend(nodes)
    return len(casts)


def _calibration_memory_option(n_batches: int) -> dict[str, int]:
    """Merge activation ranges every k runs (bounded memory); k must not divide the number of
    batches (onnxruntime 1.32 then finds nothing left to collect and fails)."""
    for k in range(4, n_batches):
        if n_batches % k:
            return {"CalibMaxIntermediateOutputs": k}
    return {}


def quantize_int8(src: str | Path, dst: str | Path, calib: np.ndarray, recipe: Int8Recipe | str = "int8") -> Path:
    """Static int8 quantisation of the fp32 ONNX ``src`` into ``dst``, calibrated on ``calib``:
    normalised float32 images [N, 3, S, S] (the model's own preprocessing)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    recipe = INT8_RECIPES[recipe] if isinstance(recipe, str) else recipe
    if calib.ndim != 4 or calib.shape[0] == 0:
        raise ExportInputError(f"int8 needs calibration images [N, 3, S, S], got shape {calib.shape}")
    target = Path(dst)
    target.parent.mkdir(parents=True, exist_ok=True)
    input_name = onnx.load(str(src), load_external_data=False).graph.input[0].name
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".quant_") as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre))
        exclude = grouped_conv_nodes(onnx.load(str(pre))) if recipe.keep_grouped_float else []
        batches = [np.ascontiguousarray(calib[i:i + CALIB_BATCH], np.float32)
                   for i in range(0, calib.shape[0], CALIB_BATCH)]
        out = Path(tmp) / "int8.onnx"
        quantize_static(str(pre), str(out), _Reader(input_name, batches),
                        quant_format=QuantFormat.QOperator if recipe.quant_format == "qoperator" else QuantFormat.QDQ,
                        per_channel=recipe.per_channel, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                        nodes_to_exclude=exclude, extra_options=_calibration_memory_option(len(batches)))
        quantised = onnx.load(str(out))
        if exclude:
            float16_weights_for_float_convs(quantised)
        quantised = compact_names(quantised)
        onnx.checker.check_model(quantised)
        _atomic_save(quantised, target)
    log.info("quantised %s -> %s (%s; %d calibration images, %d convs kept float)", src, target,
             recipe.description, calib.shape[0], len(exclude))
    return target
