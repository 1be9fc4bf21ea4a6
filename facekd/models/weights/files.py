"""Safe file I/O for weights: ``torch.load(weights_only=True)`` with every failure worded as a
``WeightsFileError`` (code in a file is refused, never run), and atomic ``torch.save``.
"""
from __future__ import annotations

import os
import pickle
import pickletools
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch

from facekd.errors import FileProblemError

__all__ = [
    "TORCH_FILE_GLOBALS", "ONNX_SUFFIX", "WeightsFileError", "load_torch_object", "load_weights_file",
    "save_weights_file",
]


TORCH_FILE_GLOBALS = ("torch.", "collections.OrderedDict")
"""Globals an ordinary (legacy-format) torch file references; not a sign of code when it is corrupt."""


ONNX_SUFFIX = ".onnx"


class WeightsFileError(FileProblemError):
    """A weights file that cannot be used; the message names the file and the problem."""


def _weights_only_detail(message: str) -> str:
    """The specific reason inside torch's long weights_only failure message."""
    skip = ("Weights only load failed", "In PyTorch 2.6", "Check the documentation", "Please file an issue")
    parts = [p.strip() for p in message.split("\n\n") if p.strip()]
    specific = [p for p in parts if not p.startswith(skip)]
    return (specific[-1] if specific else parts[-1] if parts else message).replace("WeightsUnpickler error: ", "")


def _is_refused_object(detail: str) -> bool:
    """Whether torch refused a pickled global (a class or function), as opposed to unreadable bytes."""
    return "GLOBAL" in detail


def _pickled_globals(path: Path) -> list[str]:
    """Names of the globals (classes, functions) a raw pickle file would import, read by
    disassembling its opcodes with pickletools; nothing is executed. Empty when none or unparsable."""
    names: list[str] = []
    strings: list[str] = []
    try:
        with open(path, "rb") as f:
            for opcode, arg, _ in pickletools.genops(f):
                if opcode.name == "GLOBAL" or opcode.name == "INST":
                    names.append(str(arg).replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
    except (ValueError, EOFError, UnicodeDecodeError, OSError):
        pass
    return names


def _refused(path: Path, detail: str) -> WeightsFileError:
    return WeightsFileError(
        path, "holds objects other than tensors and plain containers (" + detail + "); facekd refuses to "
              "execute code from weight files. Re-save the weights as a plain state dict "
              "(torch.save(model.state_dict(), path)) in a trusted environment")


def load_torch_object(path: str | os.PathLike[str]) -> Any:
    """``torch.load(weights_only=True)`` on CPU with every failure turned into a WeightsFileError."""
    p = Path(path)
    if not p.exists():
        raise WeightsFileError(p, "file not found")
    if not p.is_file():
        raise WeightsFileError(p, "is not a file")
    if p.suffix.lower() == ONNX_SUFFIX:
        raise WeightsFileError(p, "is an ONNX model, not a torch weights file; load it with load_backbone "
                                  "(or OnnxBackbone)")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # our own error follows
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        detail = _weights_only_detail(str(err))
        if _is_refused_object(detail):
            raise _refused(p, detail) from None
        # a raw pickle that torch's unpickler stopped reading before it reached its globals
        imported = [g for g in _pickled_globals(p) if not g.startswith(TORCH_FILE_GLOBALS)]
        if imported:
            raise _refused(p, "pickled globals " + ", ".join(sorted(set(imported))[:5])) from None
        raise WeightsFileError(p, f"is not a readable torch file (corrupt or not a checkpoint: {detail})") from None
    except (RuntimeError, EOFError, KeyError, ValueError, IndexError, TypeError, zipfile.BadZipFile,
            UnicodeDecodeError, AttributeError, OSError) as err:
        reason = str(err).split("\n")[0][:200] or type(err).__name__
        raise WeightsFileError(p, f"is not a readable torch file (corrupt, truncated or another format: "
                                  f"{type(err).__name__}: {reason})") from None


def load_weights_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a torch weights file safely (weights_only, CPU) and return its top-level dict."""
    obj = load_torch_object(path)
    if not isinstance(obj, Mapping):
        raise WeightsFileError(path, f"holds a {type(obj).__name__}, expected a dict (a state dict or checkpoint)")
    return dict(obj)


def save_weights_file(obj: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """``torch.save`` atomically: write a temporary file beside ``path``, then rename it over."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        torch.save(dict(obj), tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target
