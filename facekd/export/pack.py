"""An insightface model pack: ``DIR/models/NAME/`` with the user's detector and facekd's recogniser,
so that ``insightface.app.FaceAnalysis(name=NAME, root=DIR)`` loads both (no download: insightface
only downloads when that folder is missing) and ``app.get(img)`` gives faces whose ``embedding``
comes from the student.

FaceAnalysis routes every ``*.onnx`` of the folder by its shapes: five or more outputs make a
detector (SCRFD/RetinaFace), a square input of at least 112 px and divisible by 16 with one output
makes a recognition model. Both are checked before anything is written, and the written pack is
loaded once with insightface itself.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import onnx

from facekd.export.errors import ExportInputError
from facekd.log import get_logger

log = get_logger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
PACK_INFO = "facekd_pack.json"


def check_detector(path: str | Path) -> None:
    """``ExportInputError`` unless ``path`` is an insightface face-detection ONNX with 5 landmarks."""
    from facekd.data_prep.detectors import DetectorSpec, build_detector
    from facekd.data_prep.errors import DataPrepError

    try:
        build_detector(DetectorSpec("scrfd", str(path), min_score=0.5))
    except DataPrepError as err:
        raise ExportInputError(f"--detector {err}") from None


def check_recogniser(path: str | Path) -> int:
    """The input side of a recognition ONNX that FaceAnalysis will route as recognition, else ``ExportInputError``."""
    graph = onnx.load(str(path), load_external_data=False).graph
    dims = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or len(graph.output) != 1:
        raise ExportInputError(f"{path}: not a recognition model (one image input N x 3 x S x S, one output)")
    side = dims[2]
    if side != dims[3] or side < 112 or side % 16:
        raise ExportInputError(f"{path}: input {dims[2]}x{dims[3]} px; insightface's FaceAnalysis only takes "
                               "recognition models with a square input of at least 112 px divisible by 16 "
                               "(export a model trained at 112 px for a pack)")
    return side


def write_pack(root: str | Path, name: str, detector: str | Path, recogniser: str | Path,
               info: dict[str, Any] | None = None, verify: bool = True) -> Path:
    """Write ``root/models/name/`` (detector + recogniser ONNX + facekd_pack.json); with ``verify``
    load it with insightface's FaceAnalysis and check it picked both files."""
    if not _NAME.fullmatch(name):
        raise ExportInputError(f"--pack {name!r}: use letters, digits, '.', '_' or '-' (a folder name)")
    det, rec = Path(detector), Path(recogniser)
    if not det.is_file():
        raise ExportInputError(f"{det}: detector file not found (--detector)")
    check_detector(det)
    check_recogniser(rec)
    folder = Path(root) / "models" / name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    det_name = det.name if det.name.startswith("det") else f"det_{det.name}"
    # FaceAnalysis keeps the first model of each task in sorted order: names keep the two apart
    shutil.copyfile(det, folder / det_name)
    rec_name = f"rec_{rec.stem}.onnx"
    shutil.copyfile(rec, folder / rec_name)
    (folder / PACK_INFO).write_text(json.dumps({"detection": det_name, "recognition": rec_name,
                                                **(info or {})}, indent=2))
    if verify:
        loaded = load_pack(root, name)
        got = {task: Path(m.model_file).name for task, m in loaded.models.items()}
        if got != {"detection": det_name, "recognition": rec_name}:
            raise ExportInputError(f"{folder}: insightface loaded {got}, expected the detector and the recogniser")
    log.info("wrote insightface model pack %s (%s + %s)", folder, det_name, rec_name)
    return folder


def load_pack(root: str | Path, name: str, providers: list[str] | None = None) -> Any:
    """``insightface.app.FaceAnalysis(name=name, root=root)`` on CPU; refuses a missing folder
    rather than letting insightface download a pack of that name."""
    from insightface.app import FaceAnalysis

    folder = Path(root) / "models" / name
    if not folder.is_dir():
        raise ExportInputError(f"{folder}: no such model pack (FaceAnalysis would try to download it)")
    return FaceAnalysis(name=name, root=str(root), providers=providers or ["CPUExecutionProvider"])
