"""Per-image IJB features from a model: loose crop -> insightface ``norm_crop`` on its 5 points -> RGB ->
facekd's ``embed_images`` (flip-summed, not normalised), in blocks, decoding on a few threads."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from facekd.eval.embed import DEFAULT_BATCH_SIZE, embed_images
from facekd.eval.ijb_meta import IJBInputError, ImageList
from facekd.log import progress

ALIGNED_SIZE = 112


def aligned_crop(path: Path, landmarks: np.ndarray, where: str) -> np.ndarray:
    """The 112x112 RGB crop of one loose-crop image aligned on its 5 points (as eval_ijbc.py)."""
    from insightface.utils.face_align import norm_crop
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        problem = "image does not decode" if path.is_file() else "image file not found"
        raise IJBInputError(f"{path} ({where}): {problem}")
    return cv2.cvtColor(norm_crop(img, landmarks, image_size=ALIGNED_SIZE), cv2.COLOR_BGR2RGB)


def read_aligned(image_dir: Path, images: ImageList, start: int, stop: int,
                 pool: ThreadPoolExecutor | None = None) -> np.ndarray:
    """Aligned RGB crops [stop - start, 112, 112, 3] of images ``start:stop`` of the 5pts list."""
    def one(i: int) -> np.ndarray:
        return aligned_crop(image_dir / images.names[i], images.landmarks[i],
                            f"{images.path}:{int(images.lines[i])}")
    idx = range(start, stop)
    crops = list(pool.map(one, idx)) if pool is not None else [one(i) for i in idx]
    return np.stack(crops)


def extract_features(model: Any, image_dir: Path, images: ImageList, batch_size: int = DEFAULT_BATCH_SIZE,
                     flip: bool = True, device: str | None = None, workers: int = 4,
                     block: int = 2048, show_progress: bool = True) -> np.ndarray:
    """Features float32 [N, D] of every image of the 5pts list: image (+ its flip) embedded, not normalised."""
    n = len(images.names)
    feats: np.ndarray | None = None
    bar = progress(total=n, desc="IJB features", unit="img", disable=None if show_progress else True)
    pool = ThreadPoolExecutor(max_workers=workers) if workers > 1 else None
    try:
        for start in range(0, n, block):
            stop = min(start + block, n)
            crops = read_aligned(image_dir, images, start, stop, pool)
            emb = embed_images(model, crops, batch_size=batch_size, flip=flip, device=device,
                               normalise=False, show_progress=False)
            if feats is None:
                feats = np.empty((n, emb.shape[1]), dtype=np.float32)
            feats[start:stop] = emb
            bar.update(stop - start)
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown()
    assert feats is not None
    return feats
