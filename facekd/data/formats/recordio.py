"""``rec:PATH``: an insightface RecordIO dataset (a folder with ``train.rec``/``train.idx``, or a ``.rec``)."""
from __future__ import annotations

from pathlib import Path

from facekd.data.sources import ImageSource, OpenRequest, register_source


def is_recordio(path: Path) -> bool:
    """A ``.rec`` file, or a folder holding ``train.rec`` or another ``.rec``."""
    return (path.is_file() and path.suffix == ".rec") or (path.is_dir() and any(path.glob("*.rec")))


@register_source("rec", kinds=("face",), example="rec:PATH (a RecordIO folder or .rec)", detect=is_recordio)
def open_recordio(argument: str, request: OpenRequest) -> ImageSource:
    """An ``MXFaceRecord`` (as a pool its labels are ignored by the caller)."""
    from facekd.data.recordio import MXFaceRecord

    return MXFaceRecord(argument)
