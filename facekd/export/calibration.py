"""Calibration crops for int8 quantisation: an image folder, a .rec dataset, a verification .bin
or ``synthetic:...``, read as aligned uint8 RGB crops at the model's input size.

The crops are spread evenly over the source (folders are sorted by identity, so the first N would
be few people). A source with fewer images than asked for is used whole, with a warning.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from facekd.export.errors import ExportInputError
from facekd.log import get_logger

log = get_logger(__name__)

DEFAULT_CALIB_IMAGES = 512


def _same_file(a: str, b: str | Path) -> bool:
    try:
        return Path(a).exists() and Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def read_calibration_images(source: str, count: int, size: tuple[int, int],
                            report_files: Sequence[str | Path] = ()) -> np.ndarray:
    """Up to ``count`` uint8 RGB crops [N, H, W, 3] of ``source`` resized to ``size`` (h, w).

    Refuses a source that is one of ``report_files`` (the accuracy report must not see its own
    calibration images) and warns when the source holds fewer than ``count`` images.
    """
    from facekd.eval.embed import read_dataset_images, resize_images

    if count < 1:
        raise ExportInputError(f"--calib-images must be >= 1, got {count}")
    for f in report_files:
        if _same_file(source, f):
            raise ExportInputError(f"--calib {source} is also a --bins file: calibrate on other images than "
                                   "those the accuracy report is computed on")
    if source.lower().endswith(".bin"):
        from facekd.data.verification_bin import load_bin

        if not Path(source).is_file():
            raise ExportInputError(f"{source}: calibration .bin file not found (--calib)")
        images, _ = load_bin(source, size)
        n = images.shape[0]
        take = np.unique(np.linspace(0, n - 1, min(n, count)).round().astype(int)) if n else np.zeros(0, int)
        images = images[take]
    else:
        from facekd.data.datasets import open_source
        from facekd.data.errors import DataFileNotFoundError, DataFormatError

        try:
            dataset = open_source(source, unlabeled=True)
        except (DataFileNotFoundError, DataFormatError, ValueError) as err:
            raise ExportInputError(f"--calib {source}: {err}") from None
        n = len(dataset)
        take = np.unique(np.linspace(0, n - 1, min(n, count)).round().astype(int)) if n else np.zeros(0, int)
        images, _ = read_dataset_images(dataset, take.tolist(), size)
    if images.shape[0] == 0:
        raise ExportInputError(f"--calib {source}: the calibration source holds no images")
    if images.shape[1:3] != tuple(size):
        images = resize_images(images, size)
    if images.shape[0] < count:
        log.warning("--calib %s holds only %d image(s), fewer than the %d asked for (--calib-images): the int8 "
                    "activation ranges may not cover real faces well", source, images.shape[0], count)
    return images
