"""Turn an aligned crop file into the bytes stored in a .rec or .bin: the original JPEG bytes when
they already are a JPEG of the target size, else the decoded image (resized if needed) encoded
as JPEG at the requested quality."""
from __future__ import annotations

from os import PathLike
from typing import Literal

import cv2

from facekd.data_prep.photos import decode_photo
from facekd.data.image_codec import encode_image

__all__ = ["stored_crop", "is_jpeg", "CropAction"]

CropAction = Literal["kept", "reencoded", "resized"]


def is_jpeg(data: bytes) -> bool:
    """Whether ``data`` starts with the JPEG SOI marker."""
    return data[:3] == b"\xff\xd8\xff"


def stored_crop(data: bytes, size: int, quality: int = 95,
                source: str | PathLike[str] = "<bytes>") -> tuple[bytes, CropAction]:
    """(bytes to store, what was done) for one crop; ``DataFormatError`` if it cannot be decoded.

    ``kept``: original JPEG bytes of a ``size`` x ``size`` image; ``reencoded``: right size but
    another format (PNG, BMP...); ``resized``: another size, resized with area interpolation.
    """
    rgb = decode_photo(data, source)
    h, w = rgb.shape[:2]
    if (h, w) == (size, size):
        if is_jpeg(data):
            return bytes(data), "kept"
        return encode_image(rgb, ".jpg", quality), "reencoded"
    interp = cv2.INTER_AREA if min(h, w) > size else cv2.INTER_LINEAR
    rgb = cv2.resize(rgb, (size, size), interpolation=interp)
    return encode_image(rgb, ".jpg", quality), "resized"
