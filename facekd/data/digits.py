"""scikit-learn's 8x8 handwritten digits, upscaled to RGB: a real image dataset that ships inside
an installed package, for tests and CPU-sized benchmarks of the classification pipeline.

``load_digits`` gives 1,797 grey 8x8 images (values 0..16) of 10 classes; ``DigitsImages``
scales them to 0..255, resizes them bilinearly to ``size`` px and repeats the grey channel
three times. The train/test split is a stratified, seeded hold-out (``test_fraction`` of every
class), so it is the same on every machine.
"""
from __future__ import annotations

import cv2
import numpy as np

__all__ = ["DigitsImages", "DIGITS_SPLITS"]

DIGITS_SPLITS = ("train", "test")


def _upscale(gray: np.ndarray, size: int) -> np.ndarray:
    """0..16 float 8x8 -> RGB uint8 size x size (bilinear)."""
    scaled = np.clip(gray * (255.0 / 16.0), 0, 255).astype(np.float32)
    big = cv2.resize(scaled, (size, size), interpolation=cv2.INTER_LINEAR)
    return np.repeat(np.rint(big).astype(np.uint8)[:, :, None], 3, axis=2)


class DigitsImages:
    """One split of the upscaled digits: ``read(i) -> (RGB uint8 size x size x 3, label)``.

    ``size`` 8..256 px; ``test_fraction`` of each class is held out for ``split="test"``
    (chosen by ``seed``); ``images`` [N, size, size, 3], ``labels`` int64, ``classes`` "0".."9".
    """

    def __init__(self, size: int = 32, split: str = "train", test_fraction: float = 0.25, seed: int = 0) -> None:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        if split not in DIGITS_SPLITS:
            raise ValueError(f"digits has splits {DIGITS_SPLITS}, not {split!r}")
        if not 8 <= int(size) <= 256:
            raise ValueError(f"digits size must be in 8..256 px, got {size}")
        if not 0.0 < float(test_fraction) < 1.0:
            raise ValueError(f"digits test fraction must be in (0, 1), got {test_fraction}")
        if int(seed) < 0:
            raise ValueError(f"digits seed must be >= 0, got {seed}")
        self.size, self.split, self.test_fraction, self.seed = int(size), split, float(test_fraction), int(seed)
        bunch = load_digits()
        target = np.asarray(bunch.target, dtype=np.int64)
        train_idx, test_idx = train_test_split(np.arange(len(target)), test_size=self.test_fraction,
                                               stratify=target, random_state=self.seed)
        rows = np.sort(train_idx if split == "train" else test_idx)
        self.source_rows = rows
        self.images = np.stack([_upscale(bunch.images[r], self.size) for r in rows])
        self.labels = target[rows]
        self.classes = [str(c) for c in range(10)]

    def __repr__(self) -> str:
        return f"DigitsImages({self.split}: {len(self)} images, {self.size} px, seed {self.seed})"

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        """Always 10."""
        return 10

    def read(self, i: int) -> tuple[np.ndarray, int]:
        """(RGB uint8 size x size x 3, label) of image ``i``."""
        return self.images[i], int(self.labels[i])
