"""``bin:PATH``: the images of an insightface verification ``.bin`` (lfw.bin, cfp_fp.bin...) as face
images without identity labels: an unlabeled pool (``--unlabeled bin:lfw.bin``) or any reader of
images. Verification itself reads pairs with ``facekd.data.verification_bin.load_bin``."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from facekd.data.errors import DataFormatError
from facekd.data.sources import OpenRequest, register_source

__all__ = ["BinImages", "open_bin"]


class BinImages:
    """Every image of a verification .bin (pair i = images 2i, 2i+1), decoded on ``read``; label -1."""

    def __init__(self, path: str | Path) -> None:
        from facekd.data.verification_bin import read_bin_raw

        self.path = Path(path)
        self.bins, self.issame = read_bin_raw(self.path)
        self.labels = np.full(len(self.bins), -1, dtype=np.int64)

    def __repr__(self) -> str:
        return f"BinImages({self.path}, {len(self.bins)} images)"

    def __len__(self) -> int:
        return len(self.bins)

    @property
    def num_classes(self) -> int:
        """0: a .bin holds pairs, not identities."""
        return 0

    def read(self, i: int) -> tuple[np.ndarray, int]:
        """(RGB uint8 HxWx3, -1) of image ``i``."""
        from facekd.data.image_codec import decode_image

        return decode_image(self.bins[i], self.path, f"image {i}"), -1


def _is_bin(path: Path) -> bool:
    """A ``.bin`` file."""
    return path.suffix == ".bin" and path.is_file()


@register_source("bin", kinds=("face",), example="bin:PATH (a verification .bin, unlabeled)", detect=_is_bin)
def open_bin(argument: str, request: OpenRequest) -> BinImages:
    """The .bin's images for an unlabeled pool; a labeled request is an error (a .bin has no identities)."""
    if not request.unlabeled:
        raise DataFormatError(argument, "a verification .bin holds pairs without identity labels: use it as an "
                                        "unlabeled pool (--unlabeled) or to verify (--val-bins), not as --data")
    return BinImages(argument)
