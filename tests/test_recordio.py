"""RecordIO: record packing, reader/writer round trips, insightface layout, labels > 2**24, bad files."""
from __future__ import annotations

import logging
import multiprocessing as mp
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from facekd.data.errors import DataFormatError
from facekd.data.image_codec import decode_image, encode_image
from facekd.data.recordio import (EXACT_FLAG, MAGIC, FaceRecordWriter, IRHeader, MXFaceRecord,
                                  RecordIOReader, RecordIOWriter, exact_label, exact_pair,
                                  frame_record, pack_record, unpack_payload, write_face_record)


def _images(n: int, size: int = 16, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def _smooth(n: int, size: int = 24) -> list[np.ndarray]:
    """Smooth colour gradients: JPEG keeps them close, unlike noise."""
    y, x = np.mgrid[0:size, 0:size] / size
    return [(np.stack([x, y, (x + y) / 2 + k / (2 * n)], -1) * 200).astype(np.uint8) for k in range(n)]


@pytest.fixture()
def face_set(tmp_path: Path) -> tuple[Path, list[np.ndarray], list[int]]:
    """7 PNG images of 3 identities (sizes 2, 3, 2) written with identity records."""
    images = _images(7)
    labels = [0, 0, 1, 1, 1, 2, 2]
    out = write_face_record(tmp_path / "set", zip(images, labels), fmt=".png")
    return out, images, labels


@pytest.fixture()
def facekd_logs():
    """Records emitted by facekd's (non-propagating) logger."""
    records: list[logging.LogRecord] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = _Keep(level=logging.INFO)
    logger = logging.getLogger("facekd")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def _flat_rec(path: Path, items: list[tuple[bytes, object]]) -> None:
    """A .rec where every key 0..N-1 is an image (no dataset header), as im2rec writes it."""
    with RecordIOWriter(path) as w:
        for key, (data, label) in enumerate(items):
            w.write(key, pack_record(IRHeader(0, label, key, 0), data))


# ----------------------------------------------------------------------------- records
def test_pack_unpack_scalar_and_array_labels() -> None:
    header, image = unpack_payload(pack_record(IRHeader(0, 7.0, 3, 0), b"img"))
    assert header == IRHeader(0, 7.0, 3, 0) and image == b"img"
    header, image = unpack_payload(pack_record(IRHeader(0, [5, 0.25, 9], 4, 1), b"xyz"))
    assert header.flag == 3 and header.label.dtype == np.float32
    np.testing.assert_array_equal(header.label, [5, 0.25, 9])
    assert (header.id, header.id2, image) == (4, 1, b"xyz")
    assert exact_label(header) == 5


def test_frame_splits_on_magic_and_reader_joins(tmp_path: Path) -> None:
    magic = struct.pack("<I", MAGIC)
    payload = b"abcd" + magic + b"efgh" + magic + b"xyz"  # magic at aligned offsets 4 and 12
    framed = frame_record(payload)
    flags = []
    pos = 0
    while pos < len(framed):
        m, lrec = struct.unpack_from("<II", framed, pos)
        assert m == MAGIC
        flags.append(lrec >> 29)
        length = lrec & ((1 << 29) - 1)
        pos += 8 + length + (-length % 4)
    assert flags == [1, 2, 3]
    rec = tmp_path / "multi.rec"
    with RecordIOWriter(rec) as w:
        w.write(0, b"plain")
        w.write(1, payload)
        w.write(2, b"after")
    reader = RecordIOReader(rec)
    assert [reader.read(k) for k in (0, 1, 2)] == [b"plain", payload, b"after"]
    (tmp_path / "multi.idx").unlink()
    rebuilt = RecordIOReader(rec, write_rebuilt_index=False)
    assert rebuilt.keys.tolist() == [0, 1, 2] and rebuilt.read(1) == payload


def test_writer_is_atomic_and_refuses_overwrite(tmp_path: Path) -> None:
    rec = tmp_path / "a.rec"
    with pytest.raises(RuntimeError):
        with RecordIOWriter(rec) as w:
            w.write(0, b"x")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with RecordIOWriter(rec) as w:
        w.write(0, b"x")
        with pytest.raises(ValueError, match="key 0 written twice"):
            w.write(0, b"y")
    with pytest.raises(FileExistsError):
        RecordIOWriter(rec)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.idx", "a.rec"]


def test_reader_random_access_sparse_keys_and_pickle(tmp_path: Path) -> None:
    rec = tmp_path / "s.rec"
    with RecordIOWriter(rec) as w:
        for key in (10, 3, 42):
            w.write(key, f"payload-{key}".encode())
    reader = RecordIOReader(rec)
    assert reader.keys.tolist() == [3, 10, 42]
    assert reader.read(42) == b"payload-42" and 10 in reader and 11 not in reader
    with pytest.raises(KeyError):
        reader.read(11)
    clone = pickle.loads(pickle.dumps(reader))
    assert clone.read(3) == b"payload-3"


def _read_in_child(args: tuple[MXFaceRecord, int]) -> tuple[bytes, int]:
    ds, i = args
    return ds.read_bytes(i), ds.label(i)


def test_reader_is_safe_in_forked_workers(face_set) -> None:
    path, _, labels = face_set
    ds = MXFaceRecord(path)
    expected = [(ds.read_bytes(i), ds.label(i)) for i in range(len(ds))]  # parent opens the fd first
    with mp.get_context("fork").Pool(2) as pool:
        got = pool.map(_read_in_child, [(ds, i) for i in range(len(ds))])
    assert got == expected and [g[1] for g in got] == labels


# ----------------------------------------------------------------------------- face layout
def test_face_round_trip_png_identity_records(face_set) -> None:
    path, images, labels = face_set
    ds = MXFaceRecord(path)
    assert ds.has_header and len(ds) == 7 and ds.num_classes == 3 and ds.image_shape == (16, 16)
    for i in range(7):
        rgb, label = ds.read(i)
        assert rgb.dtype == np.uint8 and rgb.shape == (16, 16, 3)
        np.testing.assert_array_equal(rgb, images[i])
        assert label == labels[i] == ds.label(i)
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == labels
    assert ds.identity_ranges.tolist() == [[0, 2], [2, 5], [5, 7]]
    assert (path / "property").read_text().strip() == "3,16,16"
    header, _ = unpack_payload(ds.reader.read(0))
    assert header.flag == 2 and header.label.tolist() == [8.0, 11.0]  # images 1..7, ids 8..10
    # also readable through a .rec path
    assert MXFaceRecord(path / "train.rec").labels.tolist() == labels


def test_jpeg_bytes_kept_identical_and_arrays_encoded(tmp_path: Path) -> None:
    images = _smooth(4)
    encoded = [encode_image(im, ".jpg", quality=80) for im in images[:2]]
    samples = [(encoded[0], 0), (encoded[1], 0), (images[2], 1), (images[3], 1)]
    write_face_record(tmp_path, samples, num_classes=5, quality=90)
    ds = MXFaceRecord(tmp_path)
    assert ds.read_bytes(0) == encoded[0] and ds.read_bytes(1) == encoded[1]
    assert ds.read_bytes(2)[:2] == b"\xff\xd8"  # arrays became JPEG
    assert np.abs(ds.read(2)[0].astype(int) - images[2]).mean() < 4  # lossy but the same picture
    assert ds.num_classes == 5 and ds.labels.tolist() == [0, 0, 1, 1]


def test_missing_idx_is_rebuilt_logged_and_cached(face_set, facekd_logs) -> None:
    path, images, labels = face_set
    idx = path / "train.idx"
    original = idx.read_text()
    idx.unlink()
    ds = MXFaceRecord(path, write_rebuilt_index=False)
    assert not idx.exists()
    assert ds.labels.tolist() == labels
    np.testing.assert_array_equal(ds.read(4)[0], images[4])
    assert any("rebuilding it by scanning" in r.getMessage() for r in facekd_logs)
    MXFaceRecord(path)
    assert idx.read_text() == original  # cached, identical to the writer's index
    idx.write_text("0\t0\n")  # an existing index is never overwritten
    with pytest.raises(DataFormatError):
        MXFaceRecord(path)
    assert idx.read_text() == "0\t0\n"


def test_record0_without_header_and_missing_property(tmp_path: Path, facekd_logs) -> None:
    images = _images(5)
    labels = [2, 0, 1, 2, 0]
    rec = tmp_path / "train.rec"
    _flat_rec(rec, [(encode_image(im, ".png"), float(lab)) for im, lab in zip(images, labels)])
    ds = MXFaceRecord(tmp_path)
    assert not ds.has_header and len(ds) == 5 and ds.identity_ranges is None
    np.testing.assert_array_equal(ds.read(0)[0], images[0])
    assert ds.labels.tolist() == labels
    assert ds.num_classes == 3
    assert any("no property file" in r.getMessage() for r in facekd_logs)


def test_array_labels_use_first_value(tmp_path: Path) -> None:
    images = _images(3)
    rec = tmp_path / "train.rec"
    _flat_rec(rec, [(encode_image(im, ".png"), [lab, 0.5, 7.0]) for im, lab in zip(images, (4, 1, 3))])
    ds = MXFaceRecord(rec)  # record 0 has flag 3 but carries an image: it is an image, not a header
    assert len(ds) == 3 and [ds.read(i)[1] for i in range(3)] == [4, 1, 3]
    assert ds.labels.tolist() == [4, 1, 3]


def test_labels_above_2_pow_24_survive(tmp_path: Path) -> None:
    big = [2**24 + 1, 2**24 + 3, 2**31 + 5]
    assert all(float(np.float32(b)) != b for b in big)  # float32 alone would lose them
    images = _images(3)
    write_face_record(tmp_path, zip(images, big), fmt=".png", num_classes=2**31 + 6)
    ds = MXFaceRecord(tmp_path)
    assert [ds.read(i)[1] for i in range(3)] == big and ds.labels.tolist() == big
    header, _ = unpack_payload(ds.reader.read(1))
    assert header.label == np.float32(big[0])  # what insightface's reader sees (nearest float32)
    assert header.id2 == EXACT_FLAG | big[0]


def test_exact_pair_for_keys_above_2_pow_24_and_relabel_wins() -> None:
    start, end = 2**24 + 1, 2**25 + 7
    payload = pack_record(IRHeader(2, [np.float32(start), np.float32(end)], EXACT_FLAG | start,
                                   EXACT_FLAG | end), b"")
    assert exact_pair(unpack_payload(payload)[0]) == (start, end)
    # a tool that relabels the float but copies id2 verbatim: the float label wins
    relabelled = IRHeader(0, 9.0, 1, EXACT_FLAG | 2**24 + 1)
    assert exact_label(relabelled) == 9


def test_grouping_and_label_checks(tmp_path: Path) -> None:
    images = _images(3)
    with pytest.raises(ValueError, match="grouped by identity"):
        write_face_record(tmp_path / "a", zip(images, [0, 1, 0]))
    assert not (tmp_path / "a" / "train.rec").exists()
    with pytest.raises(ValueError, match="num_classes=2"):
        write_face_record(tmp_path / "b", zip(images, [0, 1, 2]), num_classes=2)
    write_face_record(tmp_path / "c", zip(images, [0, 1, 2]))
    with pytest.raises(FileExistsError):
        FaceRecordWriter(tmp_path / "c")


# ----------------------------------------------------------------------------- bad input
def test_truncated_rec(face_set, tmp_path: Path) -> None:
    path, images, _ = face_set
    rec = path / "train.rec"
    cut = MXFaceRecord(path).reader.offset(7) + 20
    rec.write_bytes(rec.read_bytes()[:cut])
    # the index now points past the end for the identity records: refused at open
    with pytest.raises(DataFormatError, match=r"train.idx \[key 8\]: line 9 points to offset"):
        MXFaceRecord(path)
    (path / "train.idx").unlink()
    with pytest.raises(DataFormatError, match=r"train.rec \[record 7\]: truncated record at offset"):
        MXFaceRecord(path, write_rebuilt_index=False)
    # a flat file cut inside its last record: the index is fine, reading that record is not
    flat = tmp_path / "flat" / "train.rec"
    flat.parent.mkdir()
    _flat_rec(flat, [(encode_image(im, ".png"), 0.0) for im in images[:3]])
    keep = RecordIOReader(flat).offset(2) + 30
    flat.write_bytes(flat.read_bytes()[:keep])
    ds = MXFaceRecord(flat.parent)
    np.testing.assert_array_equal(ds.read(1)[0], images[1])
    with pytest.raises(DataFormatError, match=r"train.rec \[key 2\]: truncated record") as err:
        ds.read(2)
    assert err.value.key == "key 2" and err.value.path == flat


def test_wrong_magic(face_set) -> None:
    path, _, _ = face_set
    rec = path / "train.rec"
    offset = MXFaceRecord(path).reader.offset(3)
    data = bytearray(rec.read_bytes())
    data[offset:offset + 4] = b"\0\1\2\3"
    rec.write_bytes(bytes(data))
    ds = MXFaceRecord(path)
    with pytest.raises(DataFormatError, match=r"\[key 3\]: wrong magic 0x03020100 at offset"):
        ds.read(2)
    np.testing.assert_array_equal(ds.read(3)[0], face_set[1][3])  # other records still read
    rec.write_bytes(b"GIF89a not a record file at all")
    (path / "train.idx").unlink()
    with pytest.raises(DataFormatError, match="wrong magic"):
        RecordIOReader(rec)


def test_idx_pointing_past_end(face_set) -> None:
    path, _, _ = face_set
    idx = path / "train.idx"
    lines = idx.read_text().splitlines()
    lines[4] = "4\t99999996"
    idx.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=r"train.idx \[key 4\]: line 5 points to offset 99999996"):
        MXFaceRecord(path)
    idx.write_text("0\tzero\n")
    with pytest.raises(DataFormatError, match="train.idx: not a RecordIO index"):
        MXFaceRecord(path)


def test_corrupt_jpeg_inside_record(tmp_path: Path) -> None:
    good = encode_image(_images(1)[0], ".jpg")
    bad = good[:2] + bytes(range(256)) * 2  # JPEG marker, garbage body
    write_face_record(tmp_path, [(good, 0), (bad, 0)], image_size=(16, 16))
    ds = MXFaceRecord(tmp_path)
    assert ds.read(0)[0].shape == (16, 16, 3)
    with pytest.raises(DataFormatError, match=r"train.rec \[key 2\]: cannot decode image"):
        ds.read(1)
    assert ds.label(1) == 0  # the header is still fine


def test_identity_header_inconsistent_with_idx(face_set) -> None:
    path, _, _ = face_set
    idx = path / "train.idx"
    full = idx.read_text().splitlines()
    idx.write_text("\n".join(full[:6]) + "\n")  # drop images 6, 7 and the identity records
    with pytest.raises(DataFormatError, match="header inconsistent with the index"):
        MXFaceRecord(path)
    idx.write_text("\n".join(full) + "\n")
    # an identity record whose range runs past the images
    rec = path / "train.rec"
    ds = MXFaceRecord(path)
    offset = ds.reader.offset(9)
    bad = frame_record(pack_record(IRHeader(2, [3.0, 12.0], 3 | EXACT_FLAG, 12 | EXACT_FLAG), b""))
    data = bytearray(rec.read_bytes())
    data[offset:offset + len(bad)] = bad
    rec.write_bytes(bytes(data))
    with pytest.raises(DataFormatError, match=r"\[key 9\]: identity range \[3, 12\) is outside"):
        MXFaceRecord(path).identity_ranges


def test_decode_image_rejects_garbage() -> None:
    with pytest.raises(DataFormatError, match=r"x.bin \[image 3\]: empty image bytes"):
        decode_image(b"", "x.bin", "image 3")
    rgb = _images(1)[0]
    np.testing.assert_array_equal(decode_image(encode_image(rgb, ".png")), rgb)


# ----------------------------------------------------------------------------- interop
def test_interop_with_insightface_rec_builder(tmp_path: Path) -> None:
    """insightface's RecBuilder needs mxnet (retired, not installed): skipped without it."""
    mx = pytest.importorskip("mxnet")
    from insightface.data.rec_builder import RecBuilder

    images = _images(4)
    builder = RecBuilder(str(tmp_path / "theirs"), image_size=(16, 16))
    builder.add([im[:, :, ::-1].copy() for im in images[:2]])
    builder.add([im[:, :, ::-1].copy() for im in images[2:]])
    builder.close()
    ours = MXFaceRecord(tmp_path / "theirs")
    assert len(ours) == 4 and ours.labels.tolist() == [0, 0, 1, 1] and ours.num_classes == 2
    write_face_record(tmp_path / "ours", zip(images, [0, 0, 1, 1]), fmt=".png")
    rec = mx.recordio.MXIndexedRecordIO(str(tmp_path / "ours" / "train.idx"),
                                        str(tmp_path / "ours" / "train.rec"), "r")
    header, image = mx.recordio.unpack(rec.read_idx(0))
    assert header.flag == 2 and list(header.label) == [5.0, 7.0]
    header, image = mx.recordio.unpack(rec.read_idx(3))
    assert header.label == 1.0 and image == MXFaceRecord(tmp_path / "ours").read_bytes(2)


# ----------------------------------------------------------------------------- interop without mxnet
# The record layout written here from the format description (magic, lrecord with cflag/length,
# '<IfQQ' header, optional float32 labels, padding to 4 bytes; .idx "key\toffset"), not with facekd's writer.
def _their_record(flag: int, label: float, id1: int, extra: list[float], image: bytes) -> bytes:
    payload = struct.pack("<IfQQ", flag, label, id1, 0) + struct.pack(f"<{len(extra)}f", *extra) + image
    return struct.pack("<II", 0xCED7230A, len(payload)) + payload + b"\0" * (-len(payload) % 4)


def _their_rec_set(out: Path, images: list[bytes], labels: list[int]) -> None:
    """insightface layout: header record 0, image keys 1..N, identity records after them."""
    ids = sorted(set(labels))
    n = len(images)
    records = [(0, _their_record(2, 0.0, 0, [n + 1.0, n + 1.0 + len(ids)], b""))]
    records += [(k + 1, _their_record(0, float(lab), k + 1, [], img)) for k, (img, lab) in enumerate(zip(images, labels))]
    for j, c in enumerate(ids):
        first = 1 + labels.index(c)
        records.append((n + 1 + j, _their_record(2, 0.0, n + 1 + j, [first, first + labels.count(c)], b"")))
    out.mkdir()
    blob, lines = b"", []
    for key, rec in records:
        lines.append(f"{key}\t{len(blob)}")
        blob += rec
    (out / "train.rec").write_bytes(blob)
    (out / "train.idx").write_text("\n".join(lines) + "\n")
    (out / "property").write_text(f"{len(ids)},16,16")


def _parse_their_way(rec: Path, idx: Path) -> dict[int, tuple[tuple, list[float], bytes]]:
    """key -> ((flag, label, id, id2), extra float labels, image bytes), read from the raw bytes."""
    data, out = rec.read_bytes(), {}
    for line in idx.read_text().split("\n"):
        if not line.strip():
            continue
        key, offset = (int(v) for v in line.split("\t"))
        magic, lrecord = struct.unpack_from("<II", data, offset)
        assert magic == 0xCED7230A and lrecord >> 29 == 0  # a whole record, no continuation
        payload = data[offset + 8: offset + 8 + (lrecord & ((1 << 29) - 1))]
        header = struct.unpack_from("<IfQQ", payload)
        extra = list(struct.unpack_from(f"<{header[0]}f", payload, 24))
        out[key] = (header, extra, payload[24 + 4 * header[0]:])
    assert offset + 8 + (lrecord & ((1 << 29) - 1)) <= len(data)
    return out


def test_interop_records_built_from_the_byte_layout(tmp_path: Path) -> None:
    """Records built here byte by byte are read by facekd: classes, identity ranges and images."""
    images = _images(5)
    encoded = [encode_image(im, ".png") for im in images]
    labels = [0, 0, 1, 1, 1]
    _their_rec_set(tmp_path / "theirs", encoded, labels)
    ours = MXFaceRecord(tmp_path / "theirs")
    assert len(ours) == 5 and ours.num_classes == 2 and ours.has_header
    assert ours.labels.tolist() == labels and ours.identity_ranges.tolist() == [[0, 2], [2, 5]]
    for i in range(5):
        image, label = ours.read(i)
        assert label == labels[i] and np.array_equal(image, images[i]) and ours.read_bytes(i) == encoded[i]
    # a flat im2rec-style file (flag 0 in record 0, every key an image) with odd-length payloads
    flat = [_their_record(0, float(k % 3), k, [], encoded[k] + b"x" * k) for k in range(4)]
    (tmp_path / "flat.rec").write_bytes(b"".join(flat))
    (tmp_path / "flat.idx").write_text("".join(f"{k}\t{sum(map(len, flat[:k]))}\n" for k in range(4)))
    with RecordIOReader(tmp_path / "flat.rec") as reader:
        for k in range(4):
            header, image = unpack_payload(reader.read(k))
            assert header.flag == 0 and header.label == float(k % 3) and header.id == k
            assert image == encoded[k] + b"x" * k


def test_interop_facekd_records_parse_with_an_independent_reader(tmp_path: Path) -> None:
    """facekd's train.rec/train.idx decoded here from the byte layout alone."""
    images = _images(5)
    labels = [0, 0, 1, 1, 1]
    out = write_face_record(tmp_path / "ours", zip(images, labels), fmt=".png")
    parsed = _parse_their_way(out / "train.rec", out / "train.idx")
    header, extra, _ = parsed[0]
    assert header[0] == 2 and extra == [6.0, 8.0]  # images are keys 1..5, identities keys 6..7
    for k in range(1, 6):
        (flag, label, _, _), _, image = parsed[k]
        assert flag == 0 and label == labels[k - 1]
        assert np.array_equal(decode_image(image), images[k - 1])
    assert [parsed[6][1], parsed[7][1]] == [[1.0, 3.0], [3.0, 6.0]]
    assert (out / "property").read_text().strip().split(",")[0] == "2"
