"""Verification ``.bin`` files (lfw.bin, cfp_fp.bin, agedb_30.bin...) read and written safely.

A ``.bin`` is a pickle of ``(bins, issame_list)``: 2N encoded images (pair i = images 2i and
2i+1) and N booleans. A pickle can run code, so ``load_bin`` uses a restricted unpickler that
admits only plain data (tuples, lists, bytes, str, bool, int; plus ``_codecs.encode`` limited to
latin-1, which Python 3 protocol-2 pickles use to store bytes) and refuses any other object
before it is built. Python 2 pickles load as well (``encoding='bytes'``). ``save_bin`` writes
the layout insightface's loader reads (``pickle.HIGHEST_PROTOCOL``, JPEG/PNG bytes).
"""
from __future__ import annotations

import codecs
import io
import os
import pickle
from os import PathLike
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from facekd.data.errors import DataFileNotFoundError, DataFormatError
from facekd.data.image_codec import decode_image, encode_image

__all__ = ["load_bin", "save_bin", "read_bin_raw", "PlainDataUnpickler"]


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """The only callable a .bin may reference: how Python 3 protocol 2 pickles spell bytes."""
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"_codecs.encode called with {type(text).__name__}, {encoding!r}")
    return text.encode("latin1")


class _RefusedObject(pickle.UnpicklingError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(name)


class PlainDataUnpickler(pickle.Unpickler):
    """An unpickler for plain data only: every global except latin-1 ``_codecs.encode`` is refused
    (so no constructor, function or ``__reduce__`` payload in the file ever runs)."""

    def find_class(self, module: str, name: str) -> object:  # noqa: D102 - see class docstring
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        raise _RefusedObject(f"{module}.{name}")

    def persistent_load(self, pid: object) -> object:  # noqa: D102
        raise _RefusedObject(f"persistent id {pid!r}")


def read_bin_raw(path: str | PathLike[str]) -> tuple[list[bytes], np.ndarray]:
    """(encoded image bytes, issame bool array) of a .bin, validated but not decoded."""
    path = Path(path)
    if not path.is_file():
        raise DataFileNotFoundError(path, "verification .bin file")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        obj = PlainDataUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except _RefusedObject as err:
        raise DataFormatError(path, f"refused: contains object {err.name}; facekd only reads plain "
                                    f"data from .bin files") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
            AttributeError, UnicodeDecodeError, MemoryError, OverflowError) as err:
        raise DataFormatError(path, f"not a verification .bin (pickle of (images, issame)): "
                                    f"{type(err).__name__}: {err}") from None
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise DataFormatError(path, f"expected a pickled pair (images, issame), got "
                                    f"{type(obj).__name__}{' of length %d' % len(obj) if isinstance(obj, (tuple, list)) else ''}")
    bins, issame = obj
    if not isinstance(bins, (list, tuple)) or not isinstance(issame, (list, tuple)):
        raise DataFormatError(path, "images and issame must be lists")
    for i, b in enumerate(bins):
        if not isinstance(b, (bytes, bytearray)):
            raise DataFormatError(path, f"entry is {type(b).__name__}, expected encoded image bytes",
                                  f"image {i}")
    for i, s in enumerate(issame):
        if not isinstance(s, (bool, int)) or s not in (0, 1):
            raise DataFormatError(path, f"issame entry is {s!r}, expected a bool", f"pair {i}")
    _check_counts(path, len(bins), len(issame))
    return [bytes(b) for b in bins], np.asarray(issame, dtype=bool)


def _check_counts(path: str | PathLike[str], n_images: int, n_pairs: int) -> None:
    if n_images % 2:
        raise DataFormatError(path, f"odd number of images ({n_images}); pairs need 2 per entry")
    if n_pairs != n_images // 2:
        raise DataFormatError(path, f"{n_images} images make {n_images // 2} pairs but issame has "
                                    f"{n_pairs} entries")


def _as_hw(image_size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, int):
        return image_size, image_size
    h, w = image_size
    return int(h), int(w)


def load_bin(path: str | PathLike[str], image_size: int | Sequence[int] | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """(images N x H x W x 3 uint8 RGB, issame bool N/2) of a verification .bin.

    With ``image_size`` (int or (h, w)) images of another size are resized to it; without it all
    images must share the first one's size.
    """
    bins, issame = read_bin_raw(path)
    hw = _as_hw(image_size)
    images: np.ndarray | None = None
    for i, data in enumerate(bins):
        rgb = decode_image(data, path, f"image {i}")
        if hw is None:
            hw = rgb.shape[:2]
        if rgb.shape[:2] != hw:
            if image_size is None:
                raise DataFormatError(path, f"image is {rgb.shape[0]}x{rgb.shape[1]} but image 0 is "
                                            f"{hw[0]}x{hw[1]}; pass image_size to resize", f"image {i}")
            rgb = cv2.resize(rgb, (hw[1], hw[0]), interpolation=cv2.INTER_AREA)
        if images is None:
            images = np.empty((len(bins), hw[0], hw[1], 3), dtype=np.uint8)
        images[i] = rgb
    if images is None:
        h, w = hw or (0, 0)
        images = np.empty((0, h, w, 3), dtype=np.uint8)
    return images, issame


def save_bin(path: str | PathLike[str], images: np.ndarray | Sequence[np.ndarray | bytes],
             issame: Sequence[bool] | np.ndarray, quality: int = 95, fmt: str = ".jpg") -> Path:
    """Write a verification .bin readable by insightface: RGB arrays are encoded (JPEG at
    ``quality``, or PNG), bytes are kept as given. The file appears atomically."""
    path = Path(path)
    items = list(images) if not isinstance(images, np.ndarray) else [images[i] for i in range(len(images))]
    flags = [bool(s) for s in np.asarray(issame).tolist()]
    _check_counts(path, len(items), len(flags))
    bins = [bytes(x) if isinstance(x, (bytes, bytearray, memoryview)) else encode_image(x, fmt, quality)
            for x in items]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            pickle.dump((bins, flags), f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
