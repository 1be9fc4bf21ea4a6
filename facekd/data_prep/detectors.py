"""Face detectors that give 5 landmarks, behind one registry, plus the face-selection policies.

Detectors (``--detector``), all offline:

* ``mtcnn``: facenet-pytorch's MTCNN, whose weights ship inside its wheel (install it with
  ``pip install --no-deps facenet-pytorch``; its declared torch pin is older than ours).
* ``scrfd`` / ``retinaface``: an insightface detection ONNX file the user supplies
  (e.g. buffalo_l's ``det_10g.onnx``), loaded through ``insightface.model_zoo.get_model`` with
  downloads disabled; ``retinaface`` decodes the outputs with insightface's RetinaFace class.

Every detector takes an RGB uint8 image and returns ``Face`` objects (box, 5 landmarks in the
ArcFace order left eye, right eye, nose, left and right mouth corner, score) in image pixels.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence

import cv2
import numpy as np

from facekd.data_prep.errors import DataPrepError, DetectorModelError
from facekd.registry import Registry

__all__ = [
    "Face", "FaceDetector", "DetectorSpec", "DETECTORS", "register_detector", "build_detector",
    "check_detector", "SELECTION_POLICIES", "register_policy", "select_face", "rank_faces",
]


@dataclass(frozen=True)
class Face:
    """One detected face: ``box`` (x0, y0, x1, y1), ``landmarks`` 5x2 (x, y), detector ``score``."""

    box: np.ndarray
    landmarks: np.ndarray
    score: float

    @property
    def area(self) -> float:
        """Box area in square pixels."""
        return float(max(self.box[2] - self.box[0], 0.0) * max(self.box[3] - self.box[1], 0.0))

    def scaled(self, factor: float) -> "Face":
        """The same face with coordinates multiplied by ``factor`` (undo a detection resize)."""
        return Face(self.box * factor, self.landmarks * factor, self.score)


class FaceDetector(Protocol):
    """What ``align`` needs from a detector."""

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """All faces found in an RGB uint8 HxWx3 image, with scores >= the detector's threshold."""
        ...


@dataclass(frozen=True)
class DetectorSpec:
    """Settings shared by all detectors (picklable, so worker processes can build their own)."""

    name: str = "mtcnn"
    model_path: str | None = None
    min_score: float = 0.9
    input_size: int = 640


_Factory = Callable[[DetectorSpec], FaceDetector]
_Checker = Callable[[DetectorSpec], None]
DETECTORS: Registry[_Factory] = Registry("detector", error=DataPrepError)
"""Detector factories by name; each entry's ``meta["check"]`` validates a spec before workers start."""


def register_detector(name: str, check: _Checker) -> Callable[[_Factory], _Factory]:
    """Class/function decorator adding a detector factory under ``name``; ``check`` validates a
    spec cheaply (files, packages) in the parent process before workers start."""
    return DETECTORS.register(name, check=check)


def _lookup(name: str) -> tuple[_Factory, _Checker]:
    entry = DETECTORS.entry(name)
    return entry.value, entry.meta["check"]


def check_detector(spec: DetectorSpec) -> None:
    """Raise ``DetectorModelError`` when ``spec`` cannot work (missing file or package)."""
    _lookup(spec.name)[1](spec)


def build_detector(spec: DetectorSpec) -> FaceDetector:
    """Build the detector named by ``spec.name`` (after ``check_detector``)."""
    factory, check = _lookup(spec.name)
    check(spec)
    return factory(spec)


# ----------------------------------------------------------------------------- MTCNN
def _check_mtcnn(spec: DetectorSpec) -> None:
    if importlib.util.find_spec("facenet_pytorch") is None:
        raise DetectorModelError(
            "detector 'mtcnn' needs the facenet-pytorch package: install it with "
            "`pip install --no-deps facenet-pytorch` (its weights ship inside the wheel)")
    if spec.model_path is not None:
        raise DetectorModelError("detector 'mtcnn' uses the weights inside facenet-pytorch; "
                                 "--detector-model is only for scrfd/retinaface")


@register_detector("mtcnn", _check_mtcnn)
class MTCNNDetector:
    """facenet-pytorch's MTCNN on CPU (weights from the wheel: nothing is downloaded)."""

    def __init__(self, spec: DetectorSpec) -> None:
        from facenet_pytorch import MTCNN  # optional dependency, imported on use

        self.min_score = float(spec.min_score)
        self.model = MTCNN(keep_all=True, select_largest=False, device="cpu")

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """Faces with score >= ``min_score`` (MTCNN's own cascade thresholds apply first)."""
        boxes, probs, points = self.model.detect(np.ascontiguousarray(rgb), landmarks=True)
        if boxes is None:
            return []
        faces = []
        for box, prob, pts in zip(boxes, probs, points):
            score = float(prob)
            if score >= self.min_score:
                faces.append(Face(np.asarray(box, np.float64).reshape(4),
                                  np.asarray(pts, np.float64).reshape(5, 2), score))
        return faces


# ----------------------------------------------------------------------------- insightface ONNX
def _check_onnx_model(spec: DetectorSpec) -> None:
    if spec.model_path is None:
        raise DetectorModelError(
            f"detector {spec.name!r} needs --detector-model PATH to an insightface detection ONNX "
            f"file (e.g. det_10g.onnx from the buffalo_l pack); facekd never downloads models")
    path = Path(spec.model_path)
    if not path.is_file():
        raise DetectorModelError(f"{path}: detector model file not found (--detector-model)")
    if path.suffix.lower() != ".onnx":
        raise DetectorModelError(f"{path}: expected an .onnx file for detector {spec.name!r}")


def _load_insightface_detector(spec: DetectorSpec):
    """insightface's SCRFD object for ``spec.model_path``, loaded with downloads off, CPU only and
    one ONNX Runtime thread (parallelism comes from worker processes)."""
    import onnxruntime
    from insightface.model_zoo import SCRFD, get_model

    path = str(Path(spec.model_path).resolve())  # an existing .onnx path: get_model never looks it up
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    try:
        model = get_model(path, download=False, providers=["CPUExecutionProvider"],
                          sess_options=options)
    except Exception as err:  # onnxruntime raises its own types for unreadable graphs
        raise DetectorModelError(f"{path}: cannot load as an ONNX model: {err}") from err
    if not isinstance(model, SCRFD):
        kind = type(model).__name__ if model is not None else "an unrecognised model"
        raise DetectorModelError(f"{path}: insightface reads this file as {kind}, not a face "
                                 f"detector (expected SCRFD/RetinaFace outputs)")
    if not model.use_kps:
        raise DetectorModelError(f"{path}: this detector gives no landmarks; alignment needs 5 points")
    return model


class _InsightfaceDetector:
    """Shared wrapper: BGR input, fixed square detection size, score threshold."""

    def __init__(self, spec: DetectorSpec, model) -> None:
        self.model = model
        self.size = (int(spec.input_size), int(spec.input_size))
        self.model.prepare(-1, det_thresh=float(spec.min_score), input_size=self.size)

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """Faces with score >= ``min_score``."""
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        det, kpss = self.model.detect(bgr, input_size=self.size)
        if det is None or len(det) == 0 or kpss is None:
            return []
        return [Face(np.asarray(d[:4], np.float64), np.asarray(k, np.float64).reshape(5, 2), float(d[4]))
                for d, k in zip(det, kpss)]


@register_detector("scrfd", _check_onnx_model)
def _scrfd(spec: DetectorSpec) -> FaceDetector:
    """SCRFD from an insightface ONNX file (e.g. det_10g.onnx, det_500m.onnx)."""
    return _InsightfaceDetector(spec, _load_insightface_detector(spec))


@register_detector("retinaface", _check_onnx_model)
def _retinaface(spec: DetectorSpec) -> FaceDetector:
    """RetinaFace from an insightface ONNX file; the session comes from model_zoo.get_model."""
    from insightface.model_zoo import RetinaFace

    loaded = _load_insightface_detector(spec)
    model = RetinaFace(model_file=loaded.model_file, session=loaded.session)
    if not model.use_kps:
        raise DetectorModelError(f"{spec.model_path}: this detector gives no landmarks")
    return _InsightfaceDetector(spec, model)


# ----------------------------------------------------------------------------- selection
_Policy = Callable[[Sequence[Face], tuple[int, int]], np.ndarray]
SELECTION_POLICIES: Registry[_Policy] = Registry("face selection policy", error=DataPrepError)
"""Face-ranking policies by name: each returns a key per face, larger is preferred."""


def register_policy(name: str) -> Callable[[_Policy], _Policy]:
    """Decorator adding a face-ranking policy: returns a key per face, larger is preferred."""
    return SELECTION_POLICIES.register(name)


@register_policy("largest")
def _largest(faces: Sequence[Face], shape: tuple[int, int]) -> np.ndarray:
    """Prefer the face with the largest box."""
    return np.array([f.area for f in faces])


@register_policy("central")
def _central(faces: Sequence[Face], shape: tuple[int, int]) -> np.ndarray:
    """Prefer the face whose box centre is closest to the image centre."""
    h, w = shape[:2]
    centres = np.array([[(f.box[0] + f.box[2]) / 2, (f.box[1] + f.box[3]) / 2] for f in faces])
    return -np.hypot(centres[:, 0] - w / 2, centres[:, 1] - h / 2)


@register_policy("score")
def _score(faces: Sequence[Face], shape: tuple[int, int]) -> np.ndarray:
    """Prefer the face with the highest detector score."""
    return np.array([f.score for f in faces])


def rank_faces(faces: Sequence[Face], shape: tuple[int, int], policy: str) -> list[int]:
    """Indices of ``faces`` from most to least preferred by ``policy`` (ties keep input order)."""
    rank = SELECTION_POLICIES.get(policy)
    if not faces:
        return []
    keys = rank(faces, shape)
    return [int(i) for i in np.argsort(-keys, kind="stable")]


def select_face(faces: Sequence[Face], shape: tuple[int, int], policy: str) -> int | None:
    """Index of the face ``policy`` keeps, or None when there is none."""
    order = rank_faces(faces, shape, policy)
    return order[0] if order else None
