"""ONNX for face backbones: ``export_onnx`` writes a checked, insightface-compatible model and
``OnnxBackbone`` runs any ONNX recognition model (ours or insightface's w600k_r50 / glintr100)
through onnxruntime as if it were a frozen torch backbone.

Exported models take an image batch N x 3 x S x S normalised as (x/255 - 0.5)/0.5 (RGB) and give
one output, the embedding N x D, like arcface_torch's exports, so insightface's
``model_zoo.get_model`` recognises them as ArcFaceONNX recognition models.
"""
from __future__ import annotations

import copy
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from facekd.errors import FileProblemError
from facekd.log import get_logger

log = get_logger(__name__)

__all__ = ["DEFAULT_OPSET", "EXPORT_TOLERANCE", "OnnxModelError", "OnnxExportError", "export_onnx",
           "onnx_max_abs_diff", "OnnxBackbone"]

DEFAULT_OPSET = 17
EXPORT_TOLERANCE = 1e-3
"""Largest max-abs difference between torch and onnxruntime embeddings accepted after export."""
INPUT_NAME = "input"
OUTPUT_NAME = "embedding"
RAW_PIXEL_MEAN = 127.5
RAW_PIXEL_STD = 127.5
"""(x - 127.5) / 127.5 == (x/255 - 0.5) / 0.5: how insightface recognition inputs are normalised."""
def _ort() -> Any:
    """onnxruntime, imported on first use (``import facekd.models`` stays free of it)."""
    import onnxruntime

    return onnxruntime


def _ort_errors() -> tuple[type[Exception], ...]:
    """The exceptions onnxruntime raises for a file it cannot load or run."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return (state.Fail, state.InvalidArgument, state.InvalidGraph, state.InvalidProtobuf, state.NoSuchFile,
            state.NotImplemented, state.RuntimeException)
_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


class OnnxModelError(FileProblemError):
    """An ONNX file that cannot be used as a recognition backbone; the message names the file."""


class OnnxExportError(RuntimeError):
    """An export that failed or whose ONNX output differs from the torch model's."""


class _EmbeddingOnly(nn.Module):
    """Exposes a backbone's embedding as the single graph output."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: Tensor) -> Tensor:
        out = self.backbone(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if not isinstance(out, Tensor) or out.dim() != 2:
            raise OnnxExportError("the model must return an embedding tensor [N, D] from model(x), got "
                                  f"{type(out).__name__}{'' if not isinstance(out, Tensor) else list(out.shape)}")
        return out


def _default_providers() -> list[str]:
    available = _ort().get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def onnx_max_abs_diff(path: str | os.PathLike[str], model: nn.Module, x: Tensor) -> tuple[float, float]:
    """Max |torch - onnxruntime| over the embeddings of ``x`` (model run on CPU in float32), and
    the largest |torch| embedding value, the scale the difference is judged against."""
    with torch.no_grad():
        expected = _EmbeddingOnly(model)(x).float().numpy()
    session = _ort().InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy().astype(np.float32)})[0]
    if got.shape != expected.shape:
        raise OnnxExportError(f"{path}: ONNX output shape {list(got.shape)} differs from torch {list(expected.shape)}")
    return float(np.abs(got - expected).max()), float(np.abs(expected).max())


def export_onnx(model: nn.Module, path: str | os.PathLike[str], input_size: int | None = None,
                opset: int = DEFAULT_OPSET, dynamic_batch: bool = True, check: bool = True,
                tolerance: float = EXPORT_TOLERANCE) -> Path:
    """Export a face backbone to ONNX (input N x 3 x S x S, output the embedding), check it with
    onnxruntime and write it atomically; the torch model itself is not modified."""
    size = input_size if input_size is not None else getattr(model, "input_size", None)
    if not isinstance(size, int) or size < 1:
        raise OnnxExportError("export_onnx needs the input size: pass input_size= or give the model an "
                              "integer 'input_size' attribute")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    cpu_model = copy.deepcopy(model).float().cpu().eval()
    wrapper = _EmbeddingOnly(cpu_model).eval()
    batch = 2 if dynamic_batch else 1
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # we choose the TorchScript exporter on purpose
            torch.onnx.export(wrapper, (x,), tmp, dynamo=False, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], opset_version=opset, dynamic_axes=axes,
                              do_constant_folding=True)
        import onnx

        onnx.checker.check_model(tmp)
        if check:
            # Relative to the embedding scale: early in training eval-mode embeddings can be huge.
            diff, scale = onnx_max_abs_diff(tmp, cpu_model, x)
            relative = diff / max(1.0, scale)
            if not relative <= tolerance:
                raise OnnxExportError(f"{target}: ONNX embeddings differ from torch by up to {diff:.3g}, "
                                      f"{relative:.3g} relative to max(1, max |embedding| = {scale:.3g}), "
                                      f"above the tolerance {tolerance:g}; the export is not faithful")
            log.info("exported %s (opset %d, input [%s, 3, %d, %d]); onnxruntime check passed: max |torch - "
                     "onnxruntime| = %.3g, relative to max(1, max |embedding| = %.3g): %.3g <= tolerance %g",
                     target, opset, "N" if dynamic_batch else 1, size, size, diff, scale, relative, tolerance)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _normalisation_in_graph(path: Path) -> bool:
    """True for MXNet-converted models that subtract and scale raw pixels inside the graph.

    Such graphs start with Sub and Mul nodes (named 'Sub...'/'_minus...' and 'Mul...'/'_mul...') and
    expect raw 0..255 pixels; insightface applies the same test.
    """
    import onnx
    from google.protobuf.message import DecodeError

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except (DecodeError, OSError, ValueError):
        return False
    names = [node.name for node in graph.node[:8]]
    has_sub = any(n.startswith(("Sub", "_minus")) for n in names)
    has_mul = any(n.startswith(("Mul", "_mul")) for n in names)
    return has_sub and has_mul


class OnnxBackbone:
    """An ONNX recognition model behaving like a frozen backbone: ``model(x)`` on normalised float
    images [N, 3, S, S] returns float32 embeddings [N, D]; ``eval()``/``to()`` are no-ops."""

    arch = "onnx"
    training = False

    def __init__(self, path: str | os.PathLike[str], providers: Sequence[Any] | None = None,
                 max_batch: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise OnnxModelError(self.path, "ONNX model file not found")
        try:
            self.session = _ort().InferenceSession(str(self.path), providers=list(providers or _default_providers()))
        except _ort_errors() as err:
            reason = str(err).split("\n")[0][:300]
            raise OnnxModelError(self.path, f"is not a readable ONNX model (corrupt or another format: {reason})") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        shape = list(inputs[0].shape) if inputs else []
        square = len(shape) == 4 and shape[1] == 3 and isinstance(shape[2], int) and shape[2] == shape[3]
        if len(inputs) != 1 or not square:
            raise OnnxModelError(self.path, "is not a face recognition model: it needs one image input "
                                            f"N x 3 x S x S, found inputs {[(i.name, i.shape) for i in inputs]}")
        out_shape = list(outputs[0].shape) if outputs else []
        if len(outputs) != 1 or len(out_shape) != 2 or not isinstance(out_shape[1], int):
            raise OnnxModelError(self.path, "is not a face recognition model: it needs one output N x D, found "
                                            f"outputs {[(o.name, o.shape) for o in outputs]}")
        if inputs[0].type not in _ORT_DTYPES:
            raise OnnxModelError(self.path, f"has input type {inputs[0].type}; expected a float image tensor")
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        self.input_dtype = _ORT_DTYPES[inputs[0].type]
        self.input_size: int = shape[2]
        self.embedding_size: int = out_shape[1]
        self.fixed_batch: int | None = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        self.max_batch = self.fixed_batch or max_batch
        self.raw_pixels = _normalisation_in_graph(self.path)

    def __call__(self, x: Tensor) -> Tensor:
        """Embeddings [N, D] (float32, on x's device) of normalised images x [N, 3, S, S]."""
        s = self.input_size
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != 3 or x.shape[2] != s or x.shape[3] != s:
            got = list(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{self.path.name} takes images [N, 3, {s}, {s}] normalised as (x/255 - 0.5)/0.5, got {got}")
        arr = x.detach().float().cpu().numpy()
        if self.raw_pixels:
            arr = arr * RAW_PIXEL_STD + RAW_PIXEL_MEAN
        arr = np.ascontiguousarray(arr, dtype=self.input_dtype)
        n = arr.shape[0]
        step = self.max_batch or max(n, 1)
        chunks = [self._run(arr[i:i + step]) for i in range(0, n, step)]
        out = np.concatenate(chunks) if chunks else np.zeros((0, self.embedding_size), np.float32)
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32)).to(x.device)

    def _run(self, chunk: np.ndarray) -> np.ndarray:
        n = chunk.shape[0]
        if self.fixed_batch is not None and n < self.fixed_batch:
            pad = np.zeros((self.fixed_batch - n, *chunk.shape[1:]), dtype=chunk.dtype)
            chunk = np.concatenate([chunk, pad])
        out = self.session.run([self.output_name], {self.input_name: chunk})[0]
        return out.reshape(out.shape[0], -1)[:n]

    forward = __call__

    def eval(self) -> "OnnxBackbone":
        """No-op (an ONNX model is always in inference mode)."""
        return self

    def train(self, mode: bool = True) -> "OnnxBackbone":
        """No-op: an ONNX model cannot be trained; it stays frozen."""
        return self

    def to(self, *args: Any, **kwargs: Any) -> "OnnxBackbone":
        """No-op: the device is chosen by the onnxruntime providers; outputs follow the input's device."""
        return self

    def requires_grad_(self, requires_grad: bool = True) -> "OnnxBackbone":
        """No-op: there are no torch parameters."""
        return self

    def parameters(self) -> Iterator[nn.Parameter]:
        """No torch parameters."""
        return iter(())

    def __repr__(self) -> str:
        return (f"OnnxBackbone({str(self.path)!r}, input_size={self.input_size}, embedding_size={self.embedding_size}, "
                f"providers={self.session.get_providers()})")
