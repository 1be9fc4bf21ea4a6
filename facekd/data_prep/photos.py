"""Read users' photos robustly as RGB uint8: EXIF rotation applied once, grayscale/RGBA/16-bit
converted, corrupt files reported with a ``DataFormatError`` naming them.

OpenCV decodes first (``IMREAD_COLOR``: applies the EXIF orientation, expands grayscale,
drops alpha, scales 16-bit to 8-bit); only formats it cannot read fall back to Pillow, which
then applies the EXIF orientation itself. The two paths never both run, so rotation happens
exactly once.
"""
from __future__ import annotations

import io
from os import PathLike
from pathlib import Path

import numpy as np

from facekd.data.errors import DataFormatError
from facekd.data.image_codec import decode_image

__all__ = ["read_photo", "decode_photo"]


def read_photo(path: str | PathLike[str]) -> np.ndarray:
    """RGB uint8 HxWx3 of the image file ``path`` (see module docstring)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataFormatError(path, f"cannot read file: {err.strerror or err}") from None
    return decode_photo(data, path)


def decode_photo(data: bytes, source: str | PathLike[str] = "<bytes>") -> np.ndarray:
    """RGB uint8 HxWx3 from encoded bytes of any format OpenCV or Pillow reads."""
    try:
        return decode_image(data, source)
    except DataFormatError as cv_error:
        if not data:
            raise
        return _decode_with_pillow(data, source, cv_error)


def _decode_with_pillow(data: bytes, source: str | PathLike[str], cv_error: DataFormatError) -> np.ndarray:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                grey = np.clip(np.asarray(im, dtype=np.int64) >> 8, 0, 255).astype(np.uint8)
                return np.repeat(grey[:, :, None], 3, axis=2)
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise DataFormatError(source, f"{cv_error.problem}; Pillow cannot read it either "
                                      f"({type(err).__name__})") from None
