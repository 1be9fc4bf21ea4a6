"""Embedding extraction for evaluation: batched, flip-summed, L2-normalised; torch or ONNX models.

``embed_images`` runs any face model (a torch backbone, or an ONNX backbone from
``facekd.models.weights.load_backbone``) over uint8 RGB images: each image and its horizontal
flip are embedded, the two embeddings added, then L2-normalised (the insightface protocol).
``load_model`` opens a facekd checkpoint, an arcface_torch backbone.pth (with its architecture
name) or an ``.onnx`` file.

``FaceEmbedder`` is the one public embedding API on top of these: ``.embed(aligned)`` for aligned
crops (arrays or image paths) and ``.embed_photos(paths, detector=...)`` for photos, which are
detected and aligned by facekd.data_prep's detectors and ``align_face``. verify, identify and the
export report all embed through it, so every path shares this module's preprocessing.
"""
from __future__ import annotations

from dataclasses import dataclass
from os import PathLike
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


class ImageReader(Protocol):
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


def read_dataset_images(dataset: ImageReader, indices: Sequence[int] | None = None,
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


def embed_dataset(model: Any, dataset: ImageReader, batch_size: int = DEFAULT_BATCH_SIZE, flip: bool = True,
                  device: str | torch.device | None = None, desc: str = "embedding",
                  show_progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings [N, D], labels [N]) of every image of a dataset (.rec reader or image folder), in blocks.

    ``model`` may be a ``FaceEmbedder``: its own flip, batch size and device are then used."""
    if isinstance(model, FaceEmbedder):
        batch_size, flip, device, model = model.batch_size, model.flip, model.device, model.model
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


# ----------------------------------------------------------------------------- the public API
ImageInput = np.ndarray | str | PathLike[str]


@dataclass
class PhotoFace:
    """One face found in a photo: its box (x0, y0, x1, y1), 5 landmarks (x, y), detector score,
    the aligned crop and its L2-normalised embedding."""

    photo: str
    box: np.ndarray
    landmarks: np.ndarray
    score: float
    embedding: np.ndarray
    crop: np.ndarray


def _read_image(path: str | PathLike[str]) -> np.ndarray:
    from facekd.data.errors import DataFileNotFoundError
    from facekd.data_prep.photos import read_photo

    p = Path(path)
    if not p.is_file():
        raise DataFileNotFoundError(p, "image file")
    return read_photo(p)


def _as_batch(aligned: ImageInput | Sequence[ImageInput]) -> np.ndarray:
    """uint8 [N, H, W, 3] from one array, an [N, H, W, 3] array, or a list of arrays / image paths."""
    if isinstance(aligned, (str, PathLike)):
        return _read_image(aligned)[None]
    if isinstance(aligned, np.ndarray):
        return _check_images(aligned[None] if aligned.ndim == 3 else aligned)
    images = [_read_image(a) if isinstance(a, (str, PathLike)) else np.asarray(a) for a in aligned]
    if not images:
        raise EmbeddingError("no images to embed")
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        size = images[0].shape[:2]
        log.info("aligned crops of different sizes %s: resizing to %dx%d", sorted(shapes)[:3], *size)
        images = [im if im.shape[:2] == size else resize_images(im[None], size)[0] for im in images]
    return _check_images(np.stack(images))


class FaceEmbedder:
    """One embedding API: L2-normalised float32 embeddings of aligned crops or of faces in photos.

    ``model`` is a file (facekd checkpoint, arcface_torch backbone.pth with ``arch``, or .onnx) or
    an already loaded model; embeddings are flip-summed (``flip``) then normalised, as insightface
    evaluates. ``options`` are builder options of a plain torch weights file (width, input_size...).
    """

    def __init__(self, model: Any, arch: str | None = None, device: str | torch.device | None = None,
                 flip: bool = True, batch_size: int = DEFAULT_BATCH_SIZE, **options: Any) -> None:
        if isinstance(model, FaceEmbedder):
            model = model.model
        elif isinstance(model, (str, PathLike)):
            model = load_model(model, arch, **options)
        elif options or arch is not None:
            raise EmbeddingError("arch/options apply to a model file, not to an already built model")
        if batch_size < 1:
            raise EmbeddingError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.flip = bool(flip)
        self.batch_size = int(batch_size)
        self.device = torch.device(device) if device is not None else default_device(model)
        self._detectors: dict[Any, Any] = {}

    @property
    def input_size(self) -> tuple[int, int] | None:
        """(height, width) the model takes; None when the model does not say."""
        return model_input_size(self.model)

    def __repr__(self) -> str:
        return f"FaceEmbedder({type(self.model).__name__}, input {self.input_size}, flip={self.flip})"

    def embed(self, aligned: ImageInput | Sequence[ImageInput], normalise: bool = True,
              desc: str = "embedding", show_progress: bool = False) -> np.ndarray:
        """Embeddings float32 [N, D] of aligned RGB uint8 crops (an array, [N, H, W, 3], or image paths)."""
        return embed_images(self.model, _as_batch(aligned), batch_size=self.batch_size, flip=self.flip,
                            device=self.device, normalise=normalise, desc=desc, show_progress=show_progress)

    def __call__(self, aligned: ImageInput | Sequence[ImageInput]) -> np.ndarray:
        """Same as ``embed``."""
        return self.embed(aligned)

    def _detector(self, detector: Any, min_score: float, det_size: int) -> Any:
        from facekd.data_prep.detectors import DetectorSpec, build_detector

        if hasattr(detector, "detect"):
            return detector
        text = str(detector)
        spec = (DetectorSpec("scrfd", text, min_score, det_size) if text.lower().endswith(".onnx")
                else DetectorSpec(text, None, min_score, det_size))
        if spec not in self._detectors:
            self._detectors[spec] = build_detector(spec)
        return self._detectors[spec]

    def align_size(self) -> int:
        """Crop side for alignment: the model's input when norm_crop supports it, else 112 (then resized)."""
        size = self.input_size
        side = size[0] if size is not None and size[0] == size[1] else 112
        return side if side % 112 == 0 or side % 128 == 0 else 112

    def embed_photos(self, paths: ImageInput | Sequence[ImageInput], detector: Any = "mtcnn",
                     min_score: float = 0.9, det_size: int = 640, max_side: int = 1280) -> list[list[PhotoFace]]:
        """Per photo, every face found (box, 5 landmarks, score, embedding), aligned with
        ``facekd.data_prep.align.align_face``. ``detector``: "mtcnn", an insightface detection
        .onnx file (SCRFD/RetinaFace layout) or an object with ``detect(rgb) -> [Face]``."""
        from facekd.data_prep.align import align_face

        items = [paths] if isinstance(paths, (str, PathLike, np.ndarray)) and not (
            isinstance(paths, np.ndarray) and paths.ndim == 4) else list(paths)
        det = self._detector(detector, min_score, det_size)
        side = self.align_size()
        found: list[list[tuple[Any, np.ndarray]]] = []
        crops: list[np.ndarray] = []
        for item in items:
            image = _read_image(item) if isinstance(item, (str, PathLike)) else _check_images(np.asarray(item)[None])[0]
            h, w = image.shape[:2]
            scale = min(1.0, max_side / max(h, w))
            if scale < 1.0:
                small = cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
                faces = [f.scaled(1.0 / scale) for f in det.detect(small)]
            else:
                faces = det.detect(image)
            found.append([(f, align_face(image, f.landmarks, side)) for f in faces])
            crops += [c for _, c in found[-1]]
        emb = self.embed(np.stack(crops)) if crops else np.zeros((0, 0), np.float32)
        out: list[list[PhotoFace]] = []
        k = 0
        for item, faces in zip(items, found):
            name = str(item) if isinstance(item, (str, PathLike)) else "<array>"
            row = []
            for face, crop in faces:
                row.append(PhotoFace(name, np.asarray(face.box, np.float64), np.asarray(face.landmarks, np.float64),
                                     float(face.score), emb[k], crop))
                k += 1
            out.append(row)
        return out
