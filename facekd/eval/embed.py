"""Embedding extraction for evaluation: batched, flip-summed, L2-normalised; torch or ONNX models.

``embed_images`` runs any face model (a torch backbone, or an ONNX backbone from
``facekd.models.weights.load_backbone``) over uint8 RGB images: each image and its horizontal
flip are embedded, the two embeddings added, then L2-normalised (the insightface protocol).
``load_model`` opens a facekd checkpoint, an arcface_torch backbone.pth (with its architecture
name) or an ``.onnx`` file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import cv2
import numpy as np
import torch
from torch import nn

from facekd.log import get_logger, progress

log = get_logger(__name__)

DEFAULT_BATCH_SIZE = 128


class EmbeddingError(ValueError):
    """Images or model output that cannot be turned into embeddings; the message says why."""


class FaceDataset(Protocol):
    """What ``embed_dataset`` reads: ``len`` and ``read(i) -> (rgb uint8 HxWx3, label)``."""

    def __len__(self) -> int: ...

    def read(self, i: int) -> tuple[np.ndarray, int]: ...


def load_model(path: str | Path, arch: str | None = None, **options: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """A face model ready for inference from a torch weights file (needs ``arch``) or an ONNX file."""
    from facekd.models.weights import load_backbone
    return load_backbone(arch, str(path), **options)


def user_errors() -> tuple[type[Exception], ...]:
    """Exceptions that mean "bad input file or option" (reported as one line by the eval CLIs)."""
    from facekd.data.errors import DataFileNotFoundError, DataFormatError
    from facekd.models.onnx_backbone import OnnxModelError
    from facekd.models.registry import UnknownModelError
    from facekd.models.weights import StateDictMismatchError, WeightsFileError
    return (EmbeddingError, DataFormatError, DataFileNotFoundError, OnnxModelError, UnknownModelError,
            StateDictMismatchError, WeightsFileError)


def parse_model_options(items: Sequence[str] | None) -> dict[str, Any]:
    """``["width=0.5", "input_size=32"]`` -> ``{"width": 0.5, "input_size": 32}`` (YAML scalars)."""
    import yaml
    options: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise EmbeddingError(f"model option '{item}' is not KEY=VALUE")
        options[key.strip()] = yaml.safe_load(value)
    return options


def model_input_size(model: Any) -> tuple[int, int] | None:
    """(height, width) the model expects, from its ``input_size`` attribute; None when unknown."""
    size = getattr(model, "input_size", None)
    if size is None:
        return None
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    dims = tuple(int(s) for s in size)
    return (dims[-2], dims[-1]) if len(dims) >= 2 else (dims[0], dims[0])


def default_device(model: Any) -> torch.device:
    """CUDA when available and the model is a torch module; ONNX models take CPU tensors."""
    if isinstance(model, nn.Module) and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def _check_images(images: np.ndarray) -> np.ndarray:
    arr = np.asarray(images)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise EmbeddingError(f"images must be an array [N, H, W, 3] of RGB pixels, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise EmbeddingError(f"images must be uint8 (0..255), got dtype {arr.dtype}")
    return arr


def resize_images(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize uint8 [N, H, W, 3] images to ``size`` = (height, width) with area/linear interpolation."""
    h, w = size
    shrink = images.shape[1] > h or images.shape[2] > w
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return np.stack([cv2.resize(img, (w, h), interpolation=interp) for img in images])


def to_model_input(images: np.ndarray) -> torch.Tensor:
    """uint8 RGB [N, H, W, 3] -> float tensor [N, 3, H, W] normalised as (x/255 - 0.5)/0.5."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    return (x / 255.0 - 0.5) / 0.5


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, np.finfo(x.dtype).tiny)


def _run(model: Any, batch: torch.Tensor, device: torch.device) -> np.ndarray:
    out = model(batch.to(device))
    if isinstance(out, tuple):  # FaceOutput when a model answers with features
        out = out[0]
    out = out.detach().float().cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out, np.float32)
    if out.ndim != 2 or out.shape[0] != batch.shape[0]:
        raise EmbeddingError(f"the model returned shape {out.shape} for a batch of {batch.shape[0]}; "
                             "expected embeddings [N, D]")
    return out


@torch.no_grad()
def embed_images(model: Any, images: np.ndarray, batch_size: int = DEFAULT_BATCH_SIZE, flip: bool = True,
                 device: str | torch.device | None = None, normalise: bool = True,
                 desc: str = "embedding", show_progress: bool = True) -> np.ndarray:
    """Embeddings float32 [N, D] of uint8 RGB images [N, H, W, 3]: flip-summed, then L2-normalised.

    ``normalise=False`` returns the flip-summed raw embeddings (IJB-style templates weight and
    average them before normalising). Images are resized when the model's ``input_size`` differs.
    """
    arr = _check_images(images)
    if batch_size < 1:
        raise EmbeddingError(f"batch_size must be >= 1, got {batch_size}")
    dev = torch.device(device) if device is not None else default_device(model)
    target = model_input_size(model)
    if target is not None and arr.shape[1:3] != target:
        log.info("resizing %s images from %dx%d to the model's input size %dx%d",
                 desc, arr.shape[1], arr.shape[2], target[0], target[1])
    was_training = isinstance(model, nn.Module) and model.training
    if isinstance(model, nn.Module):
        model.eval()
        model.to(dev)
    chunks: list[np.ndarray] = []
    bar = progress(total=arr.shape[0], desc=desc, unit="img", disable=None if show_progress else True)
    try:
        for start in range(0, arr.shape[0], batch_size):
            batch = arr[start:start + batch_size]
            if target is not None and batch.shape[1:3] != target:
                batch = resize_images(batch, target)
            x = to_model_input(batch)
            emb = _run(model, x, dev)
            if flip:
                emb = emb + _run(model, torch.flip(x, dims=[3]), dev)
            chunks.append(emb)
            bar.update(batch.shape[0])
    finally:
        bar.close()
        if was_training:
            model.train()
    out = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros((0, 0), np.float32)
    if not np.all(np.isfinite(out)):
        raise EmbeddingError("the model produced NaN or infinite embeddings")
    return l2_normalise(out) if normalise else out


def read_dataset_images(dataset: FaceDataset, indices: Sequence[int] | None = None,
                        size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All (or the chosen) images of a dataset as one uint8 array, resized to ``size`` if given, plus labels."""
    idx = range(len(dataset)) if indices is None else indices
    images, labels = [], []
    for i in idx:
        img, label = dataset.read(int(i))
        if size is not None and img.shape[:2] != size:
            img = cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_AREA)
        images.append(img)
        labels.append(int(label))
    if not images:
        return np.zeros((0, 1, 1, 3), np.uint8), np.zeros(0, np.int64)
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise EmbeddingError(f"images of different sizes {sorted(shapes)[:3]}; pass size= to resize them")
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def embed_dataset(model: Any, dataset: FaceDataset, batch_size: int = DEFAULT_BATCH_SIZE, flip: bool = True,
                  device: str | torch.device | None = None, desc: str = "embedding",
                  show_progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings [N, D], labels [N]) of every image of a dataset (.rec reader or image folder), in blocks."""
    n = len(dataset)
    if n == 0:
        raise EmbeddingError(f"{desc}: the dataset holds no images")
    size = model_input_size(model)
    block = max(batch_size * 16, 1)
    embs, labels = [], []
    bar = progress(total=n, desc=desc, unit="img", disable=None if show_progress else True)
    for start in range(0, n, block):
        images, lab = read_dataset_images(dataset, range(start, min(start + block, n)), size)
        embs.append(embed_images(model, images, batch_size, flip, device, show_progress=False))
        labels.append(lab)
        bar.update(images.shape[0])
    bar.close()
    return np.concatenate(embs), np.concatenate(labels)
