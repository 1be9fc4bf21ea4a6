"""Verification .bin: round trips, Python 2 pickles, refusal of code-carrying pickles, bad files."""
from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from facekd.data.errors import DataFileNotFoundError, DataFormatError
from facekd.data.image_codec import encode_image
from facekd.data.verification_bin import load_bin, read_bin_raw, save_bin


def _images(n: int, size: int = 12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_save_load_png_exact_and_encoded_bytes_kept(tmp_path: Path) -> None:
    images = _images(6)
    issame = [True, False, True]
    path = save_bin(tmp_path / "pairs.bin", images, issame, fmt=".png")
    loaded, flags = load_bin(path)
    assert loaded.shape == (6, 12, 12, 3) and loaded.dtype == np.uint8
    np.testing.assert_array_equal(loaded, images)
    assert flags.dtype == bool and flags.tolist() == issame
    jpegs = [encode_image(im, ".jpg", 70) for im in images[:4]]
    save_bin(tmp_path / "bytes.bin", jpegs, np.array([False, True]))
    bins, flags = read_bin_raw(tmp_path / "bytes.bin")
    assert bins == jpegs and flags.tolist() == [False, True]
    # the layout insightface's loader expects: a plain pickle of (list of bytes, list of bool)
    with open(tmp_path / "bytes.bin", "rb") as f:
        raw_bins, raw_flags = pickle.load(f)
    assert raw_bins == jpegs and raw_flags == [False, True]


def test_image_size_resizes_mixed_sizes(tmp_path: Path) -> None:
    mixed = [encode_image(_images(1, 12)[0], ".png"), encode_image(_images(1, 20)[0], ".png")]
    path = save_bin(tmp_path / "m.bin", mixed, [True])
    with pytest.raises(DataFormatError, match=r"m.bin \[image 1\]: image is 20x20 but image 0 is 12x12"):
        load_bin(path)
    images, _ = load_bin(path, image_size=(16, 14))
    assert images.shape == (2, 16, 14, 3)


def _py2_pickle(bins: list[bytes], issame: list[bool]) -> bytes:
    """Opcodes Python 2's cPickle (protocol 2) writes for a tuple (list of str, list of bool)."""
    out = bytearray(b"\x80\x02")                      # PROTO 2
    out += b"](" + b"".join(b"T" + struct.pack("<I", len(b)) + b for b in bins) + b"e"  # BINSTRING
    out += b"](" + b"".join(b"\x88" if s else b"\x89" for s in issame) + b"e"          # NEWTRUE/FALSE
    out += b"\x86."                                   # TUPLE2, STOP
    return bytes(out)


def test_python2_pickle_loads(tmp_path: Path) -> None:
    images = _images(4)
    bins = [encode_image(im, ".png") for im in images]
    path = tmp_path / "py2.bin"
    path.write_bytes(_py2_pickle(bins, [False, True]))
    with open(path, "rb") as f, pytest.raises(UnicodeDecodeError):
        pickle.load(f)  # the plain Python 3 default fails on Python 2 str...
    loaded, flags = load_bin(path)  # ...facekd reads them as bytes
    np.testing.assert_array_equal(loaded, images)
    assert flags.tolist() == [False, True]


def test_python3_protocol2_pickle_loads(tmp_path: Path) -> None:
    images = _images(2)
    path = tmp_path / "p2.bin"
    path.write_bytes(pickle.dumps(([encode_image(im, ".png") for im in images], [True]), protocol=2))
    assert b"_codecs" in path.read_bytes()  # bytes spelled through _codecs.encode
    np.testing.assert_array_equal(load_bin(path)[0], images)


class _Touch:
    """A pickle payload that creates a file when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps(([_Touch(marker)], []), protocol=pickle.HIGHEST_PROTOCOL)
    path = tmp_path / "evil.bin"
    path.write_bytes(payload)
    with pytest.raises(DataFormatError, match=r"evil.bin: refused: contains object (io|builtins)\.open; "
                                              r"facekd only reads plain data"):
        load_bin(path)
    assert not marker.exists()
    pickle.loads(payload)[0][0].close()  # proof that the payload is live: plain pickle runs it
    assert marker.exists()


def test_numpy_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "np.bin"
    path.write_bytes(pickle.dumps((_images(2), np.array([True])), protocol=2))
    with pytest.raises(DataFormatError, match="refused: contains object numpy"):
        load_bin(path)


@pytest.mark.parametrize("content, message", [
    (([b"a", b"b", b"c"], [True]), "odd number of images"),
    (([b"a", b"b", b"c", b"d"], [True]), r"4 images make 2 pairs but issame has 1"),
    (([b"a", b"b"], ["yes"]), r"\[pair 0\]: issame entry is 'yes'"),
    (([b"a", 3], [True]), r"\[image 1\]: entry is int"),
    ({"a": 1}, "expected a pickled pair"),
])
def test_bad_structure(tmp_path: Path, content: object, message: str) -> None:
    path = tmp_path / "bad.bin"
    path.write_bytes(pickle.dumps(content, protocol=pickle.HIGHEST_PROTOCOL))
    with pytest.raises(DataFormatError, match=message):
        load_bin(path)


def test_undecodable_image_names_index(tmp_path: Path) -> None:
    bins = [encode_image(im, ".png") for im in _images(4)]
    bins[2] = b"\x89PNG" + os.urandom(64)
    path = tmp_path / "c.bin"
    path.write_bytes(pickle.dumps((bins, [True, False])))
    with pytest.raises(DataFormatError, match=r"c.bin \[image 2\]: cannot decode image"):
        load_bin(path)


def test_not_a_pickle_and_missing(tmp_path: Path) -> None:
    path = tmp_path / "text.bin"
    path.write_text("10 300\nAbel_Pacheco 1 4\n")
    with pytest.raises(DataFormatError, match="text.bin: not a verification .bin"):
        load_bin(path)
    (tmp_path / "trunc.bin").write_bytes(pickle.dumps(([b"ab", b"cd"], [True]))[:-5])
    with pytest.raises(DataFormatError, match="trunc.bin: not a verification .bin"):
        load_bin(tmp_path / "trunc.bin")
    with pytest.raises(DataFileNotFoundError, match="missing.bin"):
        load_bin(tmp_path / "missing.bin")


def test_save_bin_checks_counts(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="issame has 2 entries"):
        save_bin(tmp_path / "x.bin", _images(2), [True, False])
    assert not (tmp_path / "x.bin").exists()
