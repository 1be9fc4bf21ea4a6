"""facekd.data_prep.make_bin: .bin files from LFW pairs.txt, pair lists and identity folders."""
from __future__ import annotations

import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest

from facekd.data.errors import DataFormatError
from facekd.data.image_codec import decode_image, encode_image
from facekd.data.synthetic import SyntheticFaces
from facekd.data.verification_bin import load_bin
from facekd.data_prep.errors import DataPrepError, OutputExistsError
from facekd.data_prep.make_bin import (
    build_bin, main, read_lfw_pairs, read_pair_list, sample_folder_pairs,
)

FACES = SyntheticFaces(seed=2, size=112)


def _lfw_tree(root: Path, people: int = 4, images: int = 3) -> list[str]:
    names = [f"Person_{chr(65 + i)}" for i in range(people)]
    for i, name in enumerate(names):
        (root / name).mkdir(parents=True)
        for k in range(1, images + 1):
            (root / name / f"{name}_{k:04d}.jpg").write_bytes(encode_image(FACES.render(i, k), ".jpg", 90))
    return names


def test_lfw_pairs_round_trip(tmp_path: Path) -> None:
    a, b, c, d = _lfw_tree(tmp_path / "lfw")
    pairs_txt = tmp_path / "pairs.txt"
    pairs_txt.write_text(f"2\t2\n{a}\t1\t2\n{b}\t1\t3\n{a}\t1\t{c}\t2\n{b}\t2\t{d}\t3\n"
                         f"{c}\t1\t3\n{d}\t2\t3\n{a}\t3\t{d}\t1\n{c}\t3\t{b}\t1\n")
    pairs = read_lfw_pairs(pairs_txt, tmp_path / "lfw")
    assert [p.same for p in pairs] == [True, True, False, False] * 2
    assert pairs[2].b == tmp_path / "lfw" / c / f"{c}_0002.jpg"
    out = tmp_path / "lfw.bin"
    report = build_bin(pairs, out)
    assert (report.pairs, report.genuine, report.images, report.kept_bytes) == (8, 4, 12, 12)  # 16 slots, 12 distinct files
    images, issame = load_bin(out)
    assert images.shape == (16, 112, 112, 3) and issame.tolist() == [True, True, False, False] * 2
    # what insightface's loader does: plain pickle with bytes encoding, images decoded in order
    with open(out, "rb") as f:
        bins, flags = pickle.load(f, encoding="bytes")
    assert bins[5] == pairs[2].b.read_bytes() and list(flags) == issame.tolist()
    np.testing.assert_array_equal(images[5], decode_image(bins[5]))

    with pytest.raises(OutputExistsError):
        build_bin(pairs, out)
    bad = tmp_path / "bad_pairs.txt"
    bad.write_text(f"10 300\n{a} 1\n")
    with pytest.raises(DataFormatError, match=r"bad_pairs.txt \[line 2\]"):
        read_lfw_pairs(bad, tmp_path / "lfw")
    bad.write_text(f"{a} 1 two\n")
    with pytest.raises(DataFormatError, match="not an integer"):
        read_lfw_pairs(bad, tmp_path / "lfw")
    bad.write_text(f"{a} 1 9\n")  # Person_A_0009.jpg does not exist
    with pytest.raises(DataPrepError, match="missing.*Person_A_0009.jpg"):
        build_bin(read_lfw_pairs(bad, tmp_path / "lfw"), tmp_path / "x.bin")


def test_pair_list_resizes_or_refuses(tmp_path: Path) -> None:
    (tmp_path / "imgs" / "sub dir").mkdir(parents=True)
    big = FACES.render(0, 0)
    (tmp_path / "imgs" / "a.png").write_bytes(encode_image(big, ".png"))
    (tmp_path / "imgs" / "sub dir" / "b.jpg").write_bytes(encode_image(cv2.resize(big, (150, 150)), ".jpg"))
    lst = tmp_path / "imgs" / "pairs.txt"
    lst.write_text("# comment\na.png\tsub dir/b.jpg\tsame\na.png\ta.png\t0\n")
    pairs = read_pair_list(lst)
    assert [p.same for p in pairs] == [True, False] and pairs[0].b.name == "b.jpg"
    rep = build_bin(pairs, tmp_path / "l.bin")
    assert (rep.reencoded, rep.resized) == (1, 1)
    images, _ = load_bin(tmp_path / "l.bin")
    assert images.shape == (4, 112, 112, 3)
    with pytest.raises(DataFormatError, match="not 112x112"):
        build_bin(pairs, tmp_path / "strict.bin", resize=False)
    lst.write_text("a.png a.png maybe\n")
    with pytest.raises(DataFormatError, match="label 'maybe'"):
        read_pair_list(lst)


def test_pairs_sampled_from_folder(tmp_path: Path) -> None:
    root = tmp_path / "ids"
    for i in range(40):
        (root / f"id{i:02d}").mkdir(parents=True)
        for k in range(2 + i % 3):
            (root / f"id{i:02d}" / f"{k}.jpg").write_bytes(encode_image(FACES.render(i, k), ".jpg", 80))
    pairs = sample_folder_pairs(root, num_pairs=80, folds=10, seed=5)
    assert len(pairs) == 80 and sum(p.same for p in pairs) == 40
    assert pairs == sample_folder_pairs(root, num_pairs=80, folds=10, seed=5)
    assert pairs != sample_folder_pairs(root, num_pairs=80, folds=10, seed=6)
    fold_ids = []
    for k in range(10):
        block = pairs[8 * k: 8 * k + 8]
        assert [p.same for p in block] == [True] * 4 + [False] * 4
        assert all((p.a.parent == p.b.parent) == p.same and p.a != p.b for p in block)
        assert len({frozenset((p.a, p.b)) for p in block}) == 8
        fold_ids.append({q.parent.name for p in block for q in (p.a, p.b)})
    for i in range(10):
        for j in range(i + 1, 10):
            assert not fold_ids[i] & fold_ids[j], "folds must not share identities"

    out = tmp_path / "auto.bin"
    saved = tmp_path / "auto_pairs.txt"
    assert main([str(out), "--folder", str(root), "--num-pairs", "80", "--seed", "5",
                 "--save-pairs", str(saved)]) == 0
    assert load_bin(out)[1].tolist() == [p.same for p in pairs]
    # the saved list rebuilds the same file
    assert main([str(tmp_path / "again.bin"), "--pair-list", str(saved), "--root", str(root)]) == 0
    assert (tmp_path / "again.bin").read_bytes() == out.read_bytes()
    assert main([str(out), "--folder", str(root), "--num-pairs", "80"]) == 2  # exists

    with pytest.raises(DataPrepError, match="multiple of 2 x --folds"):
        sample_folder_pairs(root, num_pairs=90)
    with pytest.raises(DataPrepError, match="at least 100"):
        sample_folder_pairs(root, num_pairs=100, folds=50)
    with pytest.raises(DataPrepError, match="distinct pairs"):
        sample_folder_pairs(root, num_pairs=400, folds=10)


def test_command_line_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert all(o in text for o in ("--lfw-pairs", "--pair-list", "--folder", "--num-pairs", "--folds",
                                   "--size", "--overwrite"))
    with pytest.raises(SystemExit):
        main(["x.bin"])  # a pair source is required
    assert main(["x.bin", "--lfw-pairs", "pairs.txt"]) == 2  # --root missing


def test_save_pairs_never_leaves_the_bin_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from facekd.data_prep.make_bin import check_outputs

    root = tmp_path / "ids"
    for i in range(4):
        (root / f"id{i}").mkdir(parents=True)
        for k in range(2):
            (root / f"id{i}" / f"{k}.jpg").write_bytes(encode_image(FACES.render(i, k), ".jpg", 80))
    out, saved = tmp_path / "mine_test.bin", tmp_path / "mine_pairs.txt"
    argv = [str(out), "--folder", str(root), "--num-pairs", "4", "--folds", "2"]
    # the pair list named as the .bin itself: refused before anything is written
    with caplog.at_level("ERROR"):
        assert main(argv + ["--save-pairs", str(out)]) == 2
    assert "is the output .bin itself" in caplog.records[-1].getMessage() and not out.exists()
    assert main(argv + ["--save-pairs", str(saved)]) == 0
    assert load_bin(out)[1].tolist() == [True, False, True, False]
    assert len(saved.read_text().splitlines()) == 4
    # a rerun that would refuse the .bin leaves the pairs file alone (it still describes the .bin)
    before = saved.read_bytes()
    assert main(argv[:-4] + ["--num-pairs", "8", "--folds", "2", "--seed", "3", "--save-pairs", str(saved)]) == 2
    assert saved.read_bytes() == before and len(load_bin(out)[1]) == 4
    assert main(argv + ["--save-pairs", str(saved), "--seed", "3", "--overwrite"]) == 0
    with pytest.raises(DataPrepError, match="--save-pairs writes the pairs sampled with --folder"):
        check_outputs(tmp_path / "x.bin", saved, folder=None, overwrite=False)
    with pytest.raises(OutputExistsError, match="exists; pass --overwrite"):
        check_outputs(tmp_path / "x.bin", saved, folder=str(root), overwrite=False)
    check_outputs(tmp_path / "x.bin", tmp_path / "new.txt", folder=str(root), overwrite=False)


def test_too_few_identities_for_the_folds_names_the_folds_that_fit(tmp_path: Path) -> None:
    _lfw_tree(tmp_path / "few", people=5, images=5)
    with pytest.raises(DataPrepError, match=r"5 identities .* at least 20: add identities, or pass --folds 2"):
        sample_folder_pairs(tmp_path / "few", num_pairs=40, folds=10)
    pairs = sample_folder_pairs(tmp_path / "few", num_pairs=40, folds=2)
    assert len(pairs) == 40 and sum(p.same for p in pairs) == 20
