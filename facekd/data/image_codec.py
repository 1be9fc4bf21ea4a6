"""Encode and decode face images as bytes (JPEG/PNG) with OpenCV, always in RGB order.

Training files store standard JPEG/PNG bytes; cv2 works in BGR, so these helpers convert at the
boundary and every array facekd passes around is RGB uint8 HxWx3.
"""
from __future__ import annotations

from os import PathLike

import cv2
import numpy as np

from facekd.data.errors import DataFormatError

__all__ = ["decode_image", "encode_image", "image_size_of"]

_FORMATS = {".jpg": ".jpg", ".jpeg": ".jpg", ".png": ".png"}


def decode_image(data: bytes | bytearray | memoryview | np.ndarray,
                 source: str | PathLike[str] = "<bytes>", key: object | None = None) -> np.ndarray:
    """Decode JPEG/PNG bytes to an RGB uint8 HxWx3 array.

    ``source`` and ``key`` only go into the error message (``DataFormatError``) raised when the
    bytes are empty or not a decodable image.
    """
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    if buf.size == 0:
        raise DataFormatError(source, "empty image bytes", key)
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if bgr is None:
        raise DataFormatError(source, f"cannot decode image ({buf.size} bytes, starting "
                                      f"{bytes(buf[:4]).hex()}): corrupt or not JPEG/PNG", key)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def encode_image(rgb: np.ndarray, fmt: str = ".jpg", quality: int = 95) -> bytes:
    """Encode an RGB uint8 HxWx3 array as JPEG (``quality`` 1-100) or PNG (lossless) bytes."""
    ext = _FORMATS.get(fmt.lower() if fmt.startswith(".") else "." + fmt.lower())
    if ext is None:
        raise ValueError(f"unsupported image format {fmt!r}; use one of {sorted(_FORMATS)}")
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        shape = getattr(rgb, "shape", None)
        dtype = getattr(rgb, "dtype", type(rgb).__name__)
        raise ValueError(f"expected an RGB uint8 array of shape HxWx3, got shape {shape} dtype {dtype}")
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if ext == ".jpg" else []
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {rgb.shape} image as {ext}")
    return buf.tobytes()


def image_size_of(data: bytes, source: str | PathLike[str] = "<bytes>",
                  key: object | None = None) -> tuple[int, int]:
    """(height, width) of encoded image bytes (decodes them; errors as ``decode_image``)."""
    h, w = decode_image(data, source, key).shape[:2]
    return int(h), int(w)
