"""CIFAR-10 and CIFAR-100 read from a local copy in torchvision's on-disk ("python version") layout.

``ROOT/cifar-100-python/{train,test,meta}`` and ``ROOT/cifar-10-batches-py/{data_batch_1..5,
test_batch,batches.meta}`` (``ROOT`` may also be that inner folder itself). Each file is a
pickle of a dict: ``data`` a uint8 array [N, 3072] (1024 red, then green, then blue values, rows
in order), ``fine_labels`` (CIFAR-100) or ``labels`` (CIFAR-10) lists of ints, and in ``meta``
the class names. facekd never downloads CIFAR: a missing file raises an error telling where to
get it.

A pickle can run code, so the files are read by ``CifarUnpickler``: plain containers, bytes and
numbers, plus exactly what a plain numeric numpy array needs (``ndarray``, ``dtype``, numpy's
``_reconstruct``, latin-1 ``_codecs.encode``); object and structured dtypes are refused, as is
every other global. Files written by Python 2 (the official ones) and Python 3 both load.
"""
from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from facekd.data.errors import DataFileNotFoundError, DataFormatError
from facekd.data.verification_bin import PlainDataUnpickler

__all__ = ["CIFAR_URL", "CifarNotFoundError", "CifarLayout", "CIFAR_LAYOUTS", "CifarUnpickler", "RefusedPickleGlobal",
           "load_cifar_pickle", "CifarImages", "save_cifar_split"]

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
CIFAR_SIDE = 32
_ROW = 3 * CIFAR_SIDE * CIFAR_SIDE


@dataclass(frozen=True)
class CifarLayout:
    """Where one CIFAR variant keeps its files (relative to its folder) and which keys it uses."""

    name: str
    folder: str
    archive: str
    splits: dict[str, tuple[str, ...]]
    meta: str
    label_key: str
    names_key: str
    num_classes: int


CIFAR_LAYOUTS: dict[str, CifarLayout] = {
    "cifar100": CifarLayout("cifar100", "cifar-100-python", "cifar-100-python.tar.gz",
                            {"train": ("train",), "test": ("test",)}, "meta", "fine_labels",
                            "fine_label_names", 100),
    "cifar10": CifarLayout("cifar10", "cifar-10-batches-py", "cifar-10-python.tar.gz",
                           {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
                           "batches.meta", "labels", "label_names", 10),
}


class CifarNotFoundError(DataFileNotFoundError):
    """A CIFAR folder or file is missing; the message says how to get the data (facekd never
    downloads it)."""

    def __init__(self, path: str | PathLike[str], what: str, layout_name: str, root: str | PathLike[str]) -> None:
        super().__init__(path, what)
        self.layout_name, self.root = layout_name, Path(root)
        archive = CIFAR_LAYOUTS[layout_name].archive
        self.args = (f"{self.path}: {what} not found. facekd never downloads data: get {archive} "
                     f"(the python version) from {CIFAR_URL} and extract it under {self.root}",)

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self):
        return (type(self), (self.path, self.what, self.layout_name, self.root))


# ----------------------------------------------------------------------------- safe unpickling
class RefusedPickleGlobal(pickle.UnpicklingError):
    """A pickle referenced a global (class or function) that facekd does not allow."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"refused global {name}")


_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1, np.uint8))[0]
_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")


def _reconstruct(subtype: object, shape: object, dtype: object) -> np.ndarray:
    """numpy's array reconstructor, for plain ``numpy.ndarray`` only."""
    if subtype is not np.ndarray:
        raise RefusedPickleGlobal(f"array subclass {subtype!r}")
    return _RECONSTRUCT(np.ndarray, shape, dtype)


def _plain_dtype(spec: object, align: object = False, copy: object = False) -> np.dtype:
    """``numpy.dtype`` for numeric kinds only: object arrays could smuggle objects in."""
    if not isinstance(spec, (str, bytes)):
        raise RefusedPickleGlobal(f"numpy.dtype({type(spec).__name__})")
    text = spec.decode("latin1") if isinstance(spec, bytes) else spec
    dtype = np.dtype(text)
    if dtype.kind not in "biuf":
        raise RefusedPickleGlobal(f"numpy.dtype({text!r}) (only numeric arrays are read)")
    return dtype


def _empty_bytes(*args: object) -> bytes:
    """``bytes()`` as protocol-2 pickles spell an empty byte string (an empty array's buffer)."""
    if args:
        raise RefusedPickleGlobal(f"bytes() with {len(args)} argument(s)")
    return b""


class CifarUnpickler(PlainDataUnpickler):
    """Plain data plus numeric numpy arrays; any other global raises ``RefusedPickleGlobal``
    before it is built (so no payload in the file ever runs)."""

    def find_class(self, module: str, name: str) -> object:  # noqa: D102 - see class docstring
        if module in _NUMPY_MODULES and name == "_reconstruct":
            return _reconstruct
        if (module, name) == ("numpy", "ndarray"):
            return np.ndarray
        if (module, name) == ("numpy", "dtype"):
            return _plain_dtype
        if module in ("__builtin__", "builtins") and name == "bytes":
            return _empty_bytes
        try:
            return super().find_class(module, name)
        except pickle.UnpicklingError:
            raise RefusedPickleGlobal(f"{module}.{name}") from None

    def persistent_load(self, pid: object) -> object:  # noqa: D102
        raise RefusedPickleGlobal(f"persistent id {pid!r}")


def _text_keys(obj: dict[Any, Any]) -> dict[str, Any]:
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def load_cifar_pickle(path: str | PathLike[str]) -> dict[str, Any]:
    """The dict stored in one CIFAR pickle file (keys as ``str``), read by ``CifarUnpickler``.

    Raises ``DataFileNotFoundError`` when missing and ``DataFormatError`` naming the file when it
    is not a pickled dict or holds anything but plain data and numeric arrays."""
    path = Path(path)
    if not path.is_file():
        raise DataFileNotFoundError(path, "CIFAR pickle file")
    raw = path.read_bytes()
    try:
        obj = CifarUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except RefusedPickleGlobal as err:
        raise DataFormatError(path, f"refused: the pickle references {err.name}; facekd reads only plain "
                                    f"data and numeric arrays from CIFAR files") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError,
            UnicodeDecodeError, MemoryError, OverflowError) as err:
        raise DataFormatError(path, f"not a CIFAR pickle: {type(err).__name__}: {err}") from None
    if not isinstance(obj, dict):
        raise DataFormatError(path, f"expected a pickled dict, got {type(obj).__name__}")
    return _text_keys(obj)


# ----------------------------------------------------------------------------- the dataset
def _folder(root: Path, layout: CifarLayout) -> Path:
    inner = root / layout.folder
    if inner.is_dir():
        return inner
    if root.name == layout.folder and root.is_dir():
        return root
    raise CifarNotFoundError(inner, f"{layout.name} folder ({layout.folder}/ in torchvision's layout)",
                             layout.name, root)


def _images_of(path: Path, data: object) -> np.ndarray:
    arr = np.asarray(data) if isinstance(data, np.ndarray) else None
    if arr is None or arr.dtype != np.uint8 or arr.ndim != 2 or arr.shape[1] != _ROW:
        shape = getattr(data, "shape", None)
        raise DataFormatError(path, f"'data' must be a uint8 array of shape [N, {_ROW}], got "
                                    f"{type(data).__name__} {shape} {getattr(data, 'dtype', '')}".rstrip())
    return arr.reshape(-1, 3, CIFAR_SIDE, CIFAR_SIDE).transpose(0, 2, 3, 1)


def _labels_of(path: Path, labels: object, count: int, num_classes: int) -> np.ndarray:
    if not isinstance(labels, (list, tuple, np.ndarray)):
        raise DataFormatError(path, f"labels must be a list, got {type(labels).__name__}")
    try:
        arr = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as err:
        raise DataFormatError(path, f"labels are not integers: {err}") from None
    if len(arr) != count:
        raise DataFormatError(path, f"{len(arr)} labels for {count} images")
    bad = np.flatnonzero((arr < 0) | (arr >= num_classes))
    if bad.size:
        raise DataFormatError(path, f"label {int(arr[bad[0]])} outside 0..{num_classes - 1}", f"image {int(bad[0])}")
    return arr


class CifarImages:
    """One split of CIFAR-10/100 in memory: ``read(i) -> (RGB uint8 32x32x3, label)``.

    ``variant`` is ``cifar100`` or ``cifar10``; ``split`` ``train`` or ``test``. ``images`` is
    [N, 32, 32, 3] uint8, ``labels`` int64, ``classes`` the names from the meta file (``"0"``,
    ``"1"``... when it is absent), ``files`` the pickles read.
    """

    def __init__(self, root: str | PathLike[str], variant: str = "cifar100", split: str = "train") -> None:
        if variant not in CIFAR_LAYOUTS:
            raise ValueError(f"unknown CIFAR variant {variant!r}; choose from {sorted(CIFAR_LAYOUTS)}")
        layout = CIFAR_LAYOUTS[variant]
        if split not in layout.splits:
            raise ValueError(f"{variant} has splits {sorted(layout.splits)}, not {split!r}")
        self.root = Path(root)
        self.variant, self.split = variant, split
        folder = _folder(self.root, layout)
        self.files = [folder / name for name in layout.splits[split]]
        for path in self.files:
            if not path.is_file():
                raise CifarNotFoundError(path, f"{variant} {split} file (incomplete extraction?)", variant, self.root)
        self.classes = self._class_names(folder / layout.meta, layout)
        images, labels = [], []
        for path in self.files:
            entry = load_cifar_pickle(path)
            for key in ("data", layout.label_key):
                if key not in entry:
                    raise DataFormatError(path, f"no {key!r} entry (keys: {sorted(entry)}); is this {variant}?")
            chunk = _images_of(path, entry["data"])
            images.append(chunk)
            labels.append(_labels_of(path, entry[layout.label_key], len(chunk), layout.num_classes))
        self.images = np.ascontiguousarray(np.concatenate(images))
        self.labels = np.concatenate(labels)

    @staticmethod
    def _class_names(meta: Path, layout: CifarLayout) -> list[str]:
        if not meta.is_file():
            return [str(i) for i in range(layout.num_classes)]
        names = load_cifar_pickle(meta).get(layout.names_key)
        if not isinstance(names, (list, tuple)) or len(names) != layout.num_classes:
            raise DataFormatError(meta, f"{layout.names_key!r} must list {layout.num_classes} class names")
        return [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]

    def __repr__(self) -> str:
        return f"CifarImages({self.variant} {self.split} at {self.root}: {len(self)} images)"

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        """100 for CIFAR-100 (fine labels), 10 for CIFAR-10."""
        return CIFAR_LAYOUTS[self.variant].num_classes

    def read(self, i: int) -> tuple[np.ndarray, int]:
        """(RGB uint8 32x32x3, label) of image ``i``."""
        return self.images[i], int(self.labels[i])


def save_cifar_split(root: str | PathLike[str], images: np.ndarray, labels: Sequence[int],
                     variant: str = "cifar100", split: str = "train",
                     class_names: Sequence[str] | None = None) -> Path:
    """Write ``images`` [N, 32, 32, 3] uint8 and ``labels`` as a split in the on-disk layout
    (protocol-2 pickles, as the official files), plus the meta file; for tests and small exports.
    Splits stored in several files (CIFAR-10 training data) are cut into equal consecutive parts."""
    layout = CIFAR_LAYOUTS[variant]
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (CIFAR_SIDE, CIFAR_SIDE, 3):
        raise ValueError(f"images must be uint8 [N, 32, 32, 3], got {images.dtype} {images.shape}")
    labels = [int(v) for v in labels]
    if len(labels) != len(images):
        raise ValueError(f"{len(labels)} labels for {len(images)} images")
    folder = Path(root) / layout.folder
    folder.mkdir(parents=True, exist_ok=True)
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), _ROW)
    names = layout.splits[split]
    for k, part in enumerate(np.array_split(np.arange(len(labels)), len(names))):
        entry = {"batch_label": f"{split} batch {k + 1}", layout.label_key: [labels[i] for i in part],
                 "data": np.ascontiguousarray(rows[part]), "filenames": [f"{split}_{i:05d}.png" for i in part]}
        _write_pickle(folder / names[k], entry)
    names_list = list(class_names) if class_names is not None else [f"class_{i}" for i in range(layout.num_classes)]
    _write_pickle(folder / layout.meta, {layout.names_key: names_list})
    return folder


def _write_pickle(path: Path, obj: object) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            pickle.dump(obj, f, protocol=2)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
