"""One file-error base: every (path, problem) error reads ``PATH: problem`` and survives pickling."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from facekd.data.errors import DataFormatError
from facekd.distill.cache import CacheError, StaleCacheError
from facekd.errors import FileProblemError
from facekd.models.weights import WeightsFileError


@pytest.mark.parametrize("cls", [WeightsFileError, CacheError, StaleCacheError, DataFormatError])
def test_file_errors_share_the_base(cls: type[FileProblemError]) -> None:
    err = cls("/tmp/x.pt", "truncated")
    assert isinstance(err, FileProblemError) and isinstance(err, ValueError)
    assert str(err) == f"{Path('/tmp/x.pt')}: truncated" and err.path == Path("/tmp/x.pt")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is cls and str(back) == str(err) and back.problem == "truncated"


def test_index_file_error_shares_the_base() -> None:
    pytest.importorskip("faiss")
    from facekd.eval.identification import IdentificationError, IndexFileError
    err = IndexFileError("gallery/meta.json", "unreadable index metadata")
    assert isinstance(err, FileProblemError) and isinstance(err, IdentificationError)
    assert str(err) == f"{Path('gallery/meta.json')}: unreadable index metadata"
    assert str(pickle.loads(pickle.dumps(err))) == str(err)


def test_onnx_error_shares_the_base() -> None:
    pytest.importorskip("onnxruntime")
    from facekd.models.onnx_backbone import OnnxModelError
    err = OnnxModelError("m.onnx", "not a model")
    assert isinstance(err, FileProblemError) and str(err) == "m.onnx: not a model"


def test_data_format_error_keeps_its_key() -> None:
    err = DataFormatError("a.rec", "bad header", key=7)
    assert str(err) == "a.rec [7]: bad header" and err.key == 7
    back = pickle.loads(pickle.dumps(err))
    assert str(back) == str(err) and back.key == 7
