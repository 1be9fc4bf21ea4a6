"""facekd.data_prep.pack: identity folders -> train.rec/train.idx/property read back by MXFaceRecord."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from facekd.data.image_codec import encode_image
from facekd.data.recordio import MXFaceRecord
from facekd.data.synthetic import SyntheticFaces
from facekd.data_prep.errors import DataPrepError, OutputExistsError
from facekd.data_prep.pack import main, pack_folder, split_identities

FACES = SyntheticFaces(seed=1, size=112)


def _crops(root: Path) -> dict[str, list[Path]]:
    """5 identities of JPEG crops plus a PNG, an off-size JPEG, a corrupt file, a duplicate and a
    near-empty identity."""
    files: dict[str, list[Path]] = {}
    for ident in range(5):
        name = f"person_{ident:02d}"
        folder = root / name
        folder.mkdir(parents=True)
        files[name] = []
        for k in range(3):
            p = folder / f"{k:03d}.jpg"
            p.write_bytes(encode_image(FACES.render(ident, k), ".jpg", 90))
            files[name].append(p)
    png = root / "person_00" / "png.png"
    png.write_bytes(encode_image(FACES.render(0, 9), ".png"))
    small = root / "person_01" / "small.jpg"
    small.write_bytes(encode_image(cv2.resize(FACES.render(1, 9), (96, 96)), ".jpg", 90))
    (root / "person_02" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (root / "person_03" / "copy.jpg").write_bytes(files["person_04"][0].read_bytes())  # duplicate
    (root / "loner").mkdir()
    (root / "loner" / "only.jpg").write_bytes(encode_image(FACES.render(7, 0), ".jpg", 90))
    (root / "loner" / ".hidden.jpg").write_bytes(b"ignored")
    return files


def test_pack_round_trip(tmp_path: Path) -> None:
    files = _crops(tmp_path / "crops")
    out = tmp_path / "rec"
    report = pack_folder(tmp_path / "crops", out, dedup=True, min_images=2, quality=93)
    assert (out / "train.rec").is_file() and (out / "train.idx").is_file()
    assert (out / "property").read_text().strip() == "5,112,112"
    assert report.identities == 5 and report.dropped_identities == [("loner", 1)]
    assert len(report.duplicates) == 1 and report.duplicates[0][0].endswith("person_04/000.jpg")
    assert [Path(f).name for f, _ in report.unreadable] == ["broken.jpg"]
    assert (report.kept_bytes, report.reencoded, report.resized) == (15, 1, 1)  # 15 + copy - dup

    rec = MXFaceRecord(out)
    assert rec.has_header and rec.num_classes == 5 and len(rec) == 17
    counts = np.bincount(rec.labels)
    assert counts.tolist() == [4, 4, 3, 4, 2]  # png, small, broken dropped, copy kept (person_03)
    ranges = rec.identity_ranges
    assert ranges.tolist() == [[0, 4], [4, 8], [8, 11], [11, 15], [15, 17]]
    # JPEGs of the right size are stored byte for byte, in sorted file order
    assert rec.read_bytes(0) == files["person_00"][0].read_bytes()
    assert rec.read_bytes(15) == files["person_04"][1].read_bytes()
    image, label = rec.read(3)  # person_00/png.png, re-encoded as JPEG
    assert label == 0 and image.shape == (112, 112, 3)
    assert np.abs(image.astype(int) - FACES.render(0, 9).astype(int)).mean() < 4
    assert rec.read(7)[0].shape == (112, 112, 3)  # the 96 px crop was resized
    lines = (out / "identities.tsv").read_text().splitlines()
    assert lines[0] == "label\tname\timages" and lines[5] == "4\tperson_04\t2"


def test_pack_validation_split_and_overwrite(tmp_path: Path) -> None:
    _crops(tmp_path / "crops")
    out = tmp_path / "rec"
    report = pack_folder(tmp_path / "crops", out, val_ids=0.34, seed=3)
    assert report.val is not None and report.val.identities == 2 and report.identities == 4
    train_names = {ln.split("\t")[1] for ln in (out / "identities.tsv").read_text().splitlines()[1:]}
    val_names = {ln.split("\t")[1] for ln in (out / "val" / "identities.tsv").read_text().splitlines()[1:]}
    assert not train_names & val_names and len(train_names | val_names) == 6
    val = MXFaceRecord(out / "val")
    assert val.num_classes == 2 and sorted(set(val.labels.tolist())) == [0, 1]
    assert split_identities(list("abcdef"), 0.34, seed=3) == split_identities(list("fedcba"), 0.34, seed=3)

    with pytest.raises(OutputExistsError, match="--overwrite"):
        pack_folder(tmp_path / "crops", out)
    assert main([str(tmp_path / "crops"), str(out)]) == 2
    assert main([str(tmp_path / "crops"), str(out), "--overwrite", "--min-images", "4"]) == 0
    assert MXFaceRecord(out).num_classes == 3  # person_00, 01, 03 have 4 usable images


def test_pack_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(DataPrepError, match="not found"):
        pack_folder(tmp_path / "nowhere", tmp_path / "out")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.jpg").write_bytes(b"x")
    with pytest.raises(DataPrepError, match="no identity sub-folders"):
        pack_folder(tmp_path / "flat", tmp_path / "out")
    with pytest.raises(DataPrepError, match="--val-ids"):
        split_identities(["a", "b"], 1.0)
    (tmp_path / "bad" / "x").mkdir(parents=True)
    (tmp_path / "bad" / "x" / "a.jpg").write_bytes(b"not an image")
    with pytest.raises(DataPrepError, match="nothing to pack"):
        pack_folder(tmp_path / "bad", tmp_path / "out")
    assert not (tmp_path / "out" / "train.rec").exists()
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert all(o in text for o in ("--dedup", "--min-images", "--val-ids", "--quality", "--overwrite"))


def test_pack_warns_about_loose_images_and_unaligned_photos(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "photos"
    for ident in range(2):
        (root / f"p{ident}").mkdir(parents=True)
        (root / f"p{ident}" / "crop.jpg").write_bytes(encode_image(FACES.render(ident, 0), ".jpg", 90))
    photo = cv2.resize(FACES.render(1, 1), (200, 160))  # a photo, not a 112x112 aligned crop
    (root / "p1" / "photo.jpg").write_bytes(encode_image(photo, ".jpg", 90))
    for k in range(3):
        (root / f"loose{k}.jpg").write_bytes(encode_image(FACES.render(5, k), ".jpg", 90))
    with caplog.at_level("WARNING"):
        report = pack_folder(root, tmp_path / "rec")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    loose = [w for w in warnings if "outside any identity folder" in w]
    assert len(loose) == 1 and "3 image(s)" in loose[0] and "loose0.jpg" in loose[0]
    assert [Path(f).name for f in report.loose_files] == ["loose0.jpg", "loose1.jpg", "loose2.jpg"]
    hint = [w for w in warnings if "facekd.data_prep.align" in w]
    assert len(hint) == 1 and "1 of 3 images were not 112x112" in hint[0] and "photo.jpg" in hint[0]
    assert MXFaceRecord(tmp_path / "rec").num_classes == 2 and len(MXFaceRecord(tmp_path / "rec")) == 3

    caplog.clear()  # aligned crops only, nothing loose: no warning at all
    (root / "p1" / "photo.jpg").unlink()
    for k in range(3):
        (root / f"loose{k}.jpg").unlink()
    with caplog.at_level("WARNING"):
        pack_folder(root, tmp_path / "rec2")
    assert not [r for r in caplog.records if r.levelname == "WARNING"]

    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "a.jpg").write_bytes(encode_image(FACES.render(0, 0), ".jpg", 90))
    with pytest.raises(DataPrepError, match="sub-folder named after them"):
        pack_folder(flat, tmp_path / "rec3")
