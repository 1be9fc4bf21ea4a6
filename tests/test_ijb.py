"""facekd.eval.ijb on a small IJB-C-format set written here (synthetic loose crops with known landmarks):
features path against a hand transcription of arcface_torch's eval_ijbc.py and insightface's
ijb_1n.py, the model path end to end (torch weights and ONNX), and every kind of bad input."""
from __future__ import annotations

import heapq
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import sklearn.preprocessing
import torch
from insightface.utils.face_align import arcface_dst
from skimage import transform as trans
from sklearn.metrics import auc, roc_curve

from facekd.data.synthetic import SyntheticFaces
from facekd.eval.ijb import format_table, main
from facekd.eval.ijb_protocol import pair_scores, template_sums
from facekd.models.registry import build_backbone

pytestmark = pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning")

OPTIONS = {"input_size": 112, "width": 0.125, "embedding_size": 16}
N_SUBJECTS = 8
X_LABELS = [10 ** -6, 10 ** -5, 10 ** -4, 10 ** -3, 10 ** -2, 10 ** -1]


# ----------------------------------------------------------------------------- the IJB-format set
def _loose_crop(faces: SyntheticFaces, subject: int, sample: int, rng: np.random.Generator):
    """(BGR loose crop, its 5 landmarks): a synthetic face warped by a random similarity transform."""
    face = faces.render(subject, sample)
    h, w = 150, 140
    m = cv2.getRotationMatrix2D((56.0, 56.0), rng.uniform(-25, 25), rng.uniform(0.9, 1.2))
    m[:, 2] += (w / 2 - 56.0 + rng.uniform(-6, 6), h / 2 - 56.0 + rng.uniform(-6, 6))
    canvas = cv2.warpAffine(face, m, (w, h), borderValue=(90, 120, 150))
    return cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR), np.c_[arcface_dst, np.ones(5)] @ m.T


def write_ijb_set(root: Path, seed: int = 0) -> dict:
    """8 subjects; gallery templates G1 (subjects 0-3) / G2 (4-7), 2 probe templates per subject,
    1-3 media of 1-3 images each; pairs: every gallery x probe template, and probe x probe."""
    rng = np.random.default_rng(seed)
    faces = SyntheticFaces(seed=seed, size=112, pose=0.5, occlusion=0, noise=0.2, blur=0)
    (root / "meta").mkdir(parents=True)
    (root / "loose_crop").mkdir()
    pts, tid_mid, template_subject, subjects = [], [], {}, []
    image, media, template = 0, 100, 1
    gallery, probes = [], []
    for subject in range(N_SUBJECTS):
        for role in ("gallery", "probe", "probe"):
            template_subject[template] = subject
            (gallery if role == "gallery" else probes).append(template)
            for _ in range(int(rng.integers(1, 4))):
                media += int(rng.integers(1, 3))
                for _ in range(int(rng.integers(1, 4))):
                    image += 1
                    img, lmk = _loose_crop(faces, subject, image, rng)
                    name = f"{image}.jpg"
                    assert cv2.imwrite(str(root / "loose_crop" / name), img)
                    score = rng.uniform(0.4, 1.0)
                    pts.append(f"{name} " + " ".join(f"{v:.3f}" for v in lmk.ravel()) + f" {score:.3f}")
                    tid_mid.append(f"{name} {template} {media}")
                    subjects.append(subject)
            template += 1
    # shuffle the image order (templates interleave in the real files too) -- the same in both files
    order = rng.permutation(len(pts))
    (root / "meta" / "ijbc_name_5pts_score.txt").write_text("\n".join(pts[i] for i in order) + "\n")
    (root / "meta" / "ijbc_face_tid_mid.txt").write_text("\n".join(tid_mid[i] for i in order) + "\n")
    pairs = [(g, p) for g in gallery for p in probes] + [(a, b) for a in probes for b in probes if a < b][::3]
    lines = [f"{a} {b} {int(template_subject[a] == template_subject[b])}" for a, b in pairs]
    (root / "meta" / "ijbc_template_pair_label.txt").write_text("\n".join(lines) + "\n")
    header = "TEMPLATE_ID,SUBJECT_ID,FILENAME\n"
    for name, part in (("G1", gallery[:4]), ("G2", gallery[4:])):
        rows = [f"{t},{template_subject[t]},img/{t}.jpg" for t in part for _ in range(2)]
        (root / "meta" / f"ijbc_1N_gallery_{name}.csv").write_text(header + "\n".join(rows) + "\n")
    rows = [f"{t},{template_subject[t]},img/{t}.jpg" for t in probes]
    (root / "meta" / "ijbc_1N_probe_mixed.csv").write_text(header + "\n".join(rows) + "\n")
    return {"images": len(pts), "templates": template - 1, "pairs": len(pairs),
            "subjects": np.asarray(subjects)[order]}


@pytest.fixture(scope="module")
def ijb_root(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("ijb") / "IJBC"
    return root, write_ijb_set(root)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    model = build_backbone("r18", **OPTIONS)
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 112, 112))  # non-trivial batch-norm statistics
    model.eval()
    path = tmp_path_factory.mktemp("model") / "backbone.pth"
    torch.save(model.state_dict(), path)
    return path, model


# ----------------------------------------------------------------------------- the reference scripts
def script_template() -> np.ndarray:
    """eval_ijbc.py's destination points: the 96x112 template shifted by 8 px in float32 (insightface's
    arcface_dst writes the shifted values directly, which differ in the last float32 bit)."""
    src = np.array([[30.2946, 51.6963], [65.5318, 51.5014], [48.0252, 71.7366], [33.5493, 92.3655],
                    [62.7299, 92.2041]], dtype=np.float32)
    src[:, 0] += 8.0
    return src


def ref_embedding_get(rimg: np.ndarray, landmark: np.ndarray, src: np.ndarray | None = None) -> np.ndarray:
    """eval_ijbc.py's Embedding.get: the aligned image and its flip, RGB, [2, 3, 112, 112] uint8."""
    src = script_template() if src is None else src
    tform = trans.SimilarityTransform()
    tform.estimate(landmark, src)
    img = cv2.warpAffine(rimg, tform.params[0:2, :], (112, 112), borderValue=0.0)
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    img_flip = np.fliplr(img)
    return np.stack([np.transpose(img, (2, 0, 1)), np.transpose(img_flip, (2, 0, 1))])


def ref_image_features(root: Path, model: torch.nn.Module, src: np.ndarray | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """eval_ijbc.py's get_image_feature (one image per batch) + its F2 sum: (feats [N, D], faceness)."""
    feats, faceness = [], []
    for line in (root / "meta" / "ijbc_name_5pts_score.txt").read_text().splitlines():
        name_lmk_score = line.strip().split(" ")
        img = cv2.imread(str(root / "loose_crop" / name_lmk_score[0]))
        lmk = np.array([float(x) for x in name_lmk_score[1:-1]], dtype=np.float32).reshape((5, 2))
        blob = torch.Tensor(ref_embedding_get(img, lmk, src))
        blob.div_(255).sub_(0.5).div_(0.5)
        with torch.no_grad():
            feat = model(blob).numpy()
        feats.append(feat.reshape(-1))
        faceness.append(name_lmk_score[-1])
    img_feats = np.array(feats, dtype=np.float32)
    d = img_feats.shape[1] // 2
    return img_feats[:, :d] + img_feats[:, d:], np.array(faceness).astype(np.float32)


def ref_inputs(img_feats, faceness, norm_feature=False, detector_score=True):
    x = img_feats
    if norm_feature:
        x = x / np.sqrt(np.sum(x ** 2, -1, keepdims=True))
    if detector_score:
        x = x * faceness[:, np.newaxis]
    return x


def ref_template_sums(img_feats, templates, medias, choose_templates):
    """The loops of image2template_feature (both scripts), before normalisation."""
    unique_templates = np.unique(choose_templates)
    template_feats = np.zeros((len(unique_templates), img_feats.shape[1]))
    for count_template, uqt in enumerate(unique_templates):
        (ind_t,) = np.where(templates == uqt)
        face_norm_feats = img_feats[ind_t]
        face_medias = medias[ind_t]
        unique_medias, unique_media_counts = np.unique(face_medias, return_counts=True)
        media_norm_feats = []
        for u, ct in zip(unique_medias, unique_media_counts):
            (ind_m,) = np.where(face_medias == u)
            if ct == 1:
                media_norm_feats += [face_norm_feats[ind_m]]
            else:
                media_norm_feats += [np.mean(face_norm_feats[ind_m], axis=0, keepdims=True)]
        template_feats[count_template] = np.sum(np.array(media_norm_feats), axis=0)
    return template_feats, unique_templates


def ref_verification(template_norm_feats, unique_templates, p1, p2):
    template2id = np.zeros((max(unique_templates) + 1, 1), dtype=int)
    for count_template, uqt in enumerate(unique_templates):
        template2id[uqt] = count_template
    score = np.zeros((len(p1),))
    total_pairs = np.array(range(len(p1)))
    for s in [total_pairs[i:i + 100000] for i in range(0, len(p1), 100000)]:
        feat1 = template_norm_feats[template2id[p1[s]]]
        feat2 = template_norm_feats[template2id[p2[s]]]
        score[s] = np.sum(feat1 * feat2, -1).flatten()
    return score


def ref_tar_table(label, score):
    fpr, tpr, _ = roc_curve(label, score)
    roc_auc = auc(fpr, tpr)
    fpr, tpr = np.flipud(fpr), np.flipud(tpr)
    row = []
    for x in X_LABELS:
        _, min_index = min(list(zip(abs(fpr - x), range(len(fpr)))))
        row.append(tpr[min_index])
    return row, roc_auc


def ref_1n(x, templates, medias, root: Path):
    """ijb_1n.py: gallery G1+G2, probe_mixed, gen_mask, evaluation (top-k and TPIR@FPIR)."""
    def read(name):
        meta = np.loadtxt(root / "meta" / name, dtype=str, skiprows=1, delimiter=",")
        return meta[:, 0].astype(int), meta[:, 1].astype(int)

    def templ(choose_templates, choose_ids):
        feats, uniq = ref_template_sums(x, templates, medias, choose_templates)
        _, indices = np.unique(choose_templates, return_index=True)
        return feats / np.sqrt(np.sum(feats ** 2, -1, keepdims=True)), choose_ids[indices]

    g1, s1 = read("ijbc_1N_gallery_G1.csv")
    g2, s2 = read("ijbc_1N_gallery_G2.csv")
    gallery_feats, gallery_ids = templ(np.concatenate([g1, g2]), np.concatenate([s1, s2]))
    pt, ps = read("ijbc_1N_probe_mixed.csv")
    probe_feats, probe_ids = templ(pt, ps)
    mask = []
    for query_id in probe_ids:
        pos = [i for i, v in enumerate(gallery_ids) if query_id == v]
        assert len(pos) == 1
        mask.append(pos[0])
    similarity = np.dot(probe_feats, gallery_feats.T)
    top_inds = np.argsort(-similarity)
    q = probe_feats.shape[0]
    out = {"top1": sum(top_inds[i, 0] == mask[i] for i in range(q)) / q,
           "top5": sum(mask[i] in top_inds[i, 0:5] for i in range(q)) / q,
           "top10": sum(mask[i] in top_inds[i, 0:10] for i in range(q)) / q}
    fars = [0.01, 0.1]
    required_topk = [math.ceil(q * f) for f in fars]
    top_sims = similarity
    pos_sims = []
    for i in range(q):
        pos_sims.append(top_sims[i, mask[i]])
        top_sims[i, mask[i]] = -2.0
    pos_sims = np.array(pos_sims)
    neg_sims = heapq.nlargest(max(required_topk), top_sims[np.where(top_sims > -2.0)])
    out["tpir_at_fpir"] = {str(f): np.sum(pos_sims > neg_sims[k - 1]) / q for f, k in zip(fars, required_topk)}
    return out


def reference_report(root: Path, img_feats: np.ndarray, faceness: np.ndarray, **mode) -> dict:
    tid = np.loadtxt(root / "meta" / "ijbc_face_tid_mid.txt", dtype=str)
    templates, medias = tid[:, 1].astype(int), tid[:, 2].astype(int)
    pairs = np.loadtxt(root / "meta" / "ijbc_template_pair_label.txt", dtype=int)
    x = ref_inputs(img_feats, faceness, **mode)
    feats, uniq = ref_template_sums(x, templates, medias, templates)
    score = ref_verification(sklearn.preprocessing.normalize(feats), uniq, pairs[:, 0], pairs[:, 1])
    row, roc_auc = ref_tar_table(pairs[:, 2], score)
    return {"score": score, "tar": row, "auc": roc_auc, "templates": feats, "1n": ref_1n(x, templates, medias, root)}


# ----------------------------------------------------------------------------- features path
def _faceness(root: Path) -> np.ndarray:
    lines = (root / "meta" / "ijbc_name_5pts_score.txt").read_text().splitlines()
    return np.array([ln.split(" ")[-1] for ln in lines]).astype(np.float32)


@pytest.mark.parametrize("flags", [[], ["--no-detector-score"], ["--norm-feature"],
                                   ["--norm-feature", "--no-detector-score"]])
def test_features_path_equals_the_reference_scripts(ijb_root, tmp_path, flags, capsys) -> None:
    root, info = ijb_root
    rng = np.random.default_rng(1)
    # a direction per subject plus noise (so that the 1:N figures are not trivial), random norms (N1 mode)
    centres = rng.standard_normal((N_SUBJECTS, 24))
    noise = rng.standard_normal((info["images"], 24)) * 1.3
    feats = ((centres[info["subjects"]] + noise) * rng.uniform(0.5, 3.0, (info["images"], 1))).astype(np.float32)
    np.save(tmp_path / "feats.npy", feats)
    assert main(["--root", str(root), "--target", "IJBC", "--features", str(tmp_path / "feats.npy"),
                 "--out", str(tmp_path / "out"), *flags]) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "ijb.json").read_text())
    ref = reference_report(root, feats, _faceness(root), norm_feature="--norm-feature" in flags,
                           detector_score="--no-detector-score" not in flags)
    assert list(report) == ["target", "images", "templates", "pairs", "verification", "identification"]
    assert (report["target"], report["images"], report["templates"], report["pairs"]) == (
        "IJBC", info["images"], info["templates"], info["pairs"])
    scores = np.load(tmp_path / "out" / "ijbc_scores.npy")
    assert scores.shape == (info["pairs"],) and scores.dtype == np.float64
    np.testing.assert_allclose(scores, ref["score"], rtol=0, atol=1e-12)
    tar = report["verification"]["tar_at_far"]
    assert list(tar) == ["1e-06", "1e-05", "1e-04", "1e-03", "1e-02", "1e-01"]
    assert list(tar.values()) == pytest.approx(ref["tar"], abs=0)
    assert report["verification"]["auc"] == pytest.approx(ref["auc"], abs=1e-12)
    assert report["identification"] == ref["1n"]
    assert 0.0 < ref["1n"]["tpir_at_fpir"]["0.1"] < 1.0 and 0.0 < ref["1n"]["top1"] < 1.0
    assert 0.5 < report["verification"]["auc"] < 1.0
    assert (tmp_path / "out" / "roc.png").stat().st_size > 1000
    assert "| feats-IJBC |" in printed and "0.0001" in printed


def test_template_features_are_bit_identical_to_the_loops() -> None:
    rng = np.random.default_rng(0)
    n = 3000
    x = (rng.standard_normal((n, 64)) * 3).astype(np.float32)
    templates = rng.integers(0, 200, n) * 7 + 3
    medias = rng.integers(0, 40, n)  # many media per template, media shared between templates
    uniq, sums = template_sums(x, templates, medias)
    ref, ref_uniq = ref_template_sums(x, templates, medias, templates)
    np.testing.assert_array_equal(uniq, ref_uniq)
    np.testing.assert_array_equal(sums.astype(np.float64), ref)


def test_pair_scores_dense_and_gathered_blocks_agree_with_the_loop() -> None:
    rng = np.random.default_rng(0)
    feats = sklearn.preprocessing.normalize(rng.standard_normal((300, 32)))
    uniq = np.arange(300)
    dense = (np.repeat(np.arange(40), 250), np.tile(np.arange(40, 290), 40))  # sorted, dense
    sparse = (rng.integers(0, 300, 5000), rng.integers(0, 300, 5000))  # unsorted, sparse
    for r1, r2 in (dense, sparse):
        got = pair_scores(feats, r1, r2, chunk=777)
        np.testing.assert_allclose(got, ref_verification(feats, uniq, r1, r2), rtol=0, atol=1e-14)


def test_table_layout_is_prettytable_default() -> None:
    text = format_table("ijbc-IJBC", {x: v for x, v in zip(X_LABELS, [0.8926, 0.9423, 0.9614, 0.9752, 0.98, 1])})
    assert text.splitlines() == [
        "+-----------+-------+-------+--------+-------+-------+--------+",
        "|  Methods  | 1e-06 | 1e-05 | 0.0001 | 0.001 |  0.01 |  0.1   |",
        "+-----------+-------+-------+--------+-------+-------+--------+",
        "| ijbc-IJBC | 89.26 | 94.23 | 96.14  | 97.52 | 98.00 | 100.00 |",
        "+-----------+-------+-------+--------+-------+-------+--------+"]


# ----------------------------------------------------------------------------- model path
def test_model_path_torch_and_onnx_end_to_end(ijb_root, tiny_model, tmp_path, capsys) -> None:
    root, info = ijb_root
    path, model = tiny_model
    options = [f"--model-option={k}={v}" for k, v in OPTIONS.items()]
    assert main(["--root", str(root), "--target", "IJBC", "--model", str(path), "--arch", "r18", *options,
                 "--batch-size", "7", "--out", str(tmp_path / "torch")]) == 0
    feats = np.load(tmp_path / "torch" / "features.npy")
    # the script's pipeline with norm_crop's template: the same features
    ref_feats, faceness = ref_image_features(root, model, src=arcface_dst)
    assert feats.shape == (info["images"], 16)
    np.testing.assert_allclose(feats, ref_feats, rtol=1e-5, atol=1e-5)
    # with the script's own float32 template: crops differ by 1 grey level on a few pixels at most
    script_feats, _ = ref_image_features(root, model)
    assert np.abs(feats - script_feats).max() < 5e-3
    report = json.loads((tmp_path / "torch" / "ijb.json").read_text())
    ref = reference_report(root, ref_feats, faceness)
    np.testing.assert_allclose(np.load(tmp_path / "torch" / "ijbc_scores.npy"), ref["score"], atol=1e-5)
    assert report["verification"]["auc"] == pytest.approx(ref["auc"], abs=2e-3)
    assert report["verification"]["auc"] > 0.6  # an untrained net still separates synthetic identities a bit
    # a rerun from the written features gives the same report without the network
    assert main(["--root", str(root), "--target", "IJBC", "--features", str(tmp_path / "torch" / "features.npy"),
                 "--out", str(tmp_path / "rerun")]) == 0
    assert json.loads((tmp_path / "rerun" / "ijb.json").read_text()) == report
    # the same network exported to ONNX
    onnx_backbone = pytest.importorskip("facekd.models.onnx_backbone")
    onnx_path = onnx_backbone.export_onnx(model, tmp_path / "model.onnx")
    assert main(["--root", str(root), "--target", "IJBC", "--model", str(onnx_path), "--workers", "1",
                 "--out", str(tmp_path / "onnx")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "onnx" / "features.npy"), feats, rtol=1e-3, atol=1e-3)
    onnx_report = json.loads((tmp_path / "onnx" / "ijb.json").read_text())
    assert onnx_report["verification"]["auc"] == pytest.approx(report["verification"]["auc"], abs=2e-3)
    assert "| backbone-IJBC |" in capsys.readouterr().out


def test_model_that_does_not_fit_is_hinted_in_ijb_flags(ijb_root, tiny_model, tmp_path, capsys) -> None:
    root, _ = ijb_root
    path, _ = tiny_model  # r18 at width 0.125, 16-d: given without its options
    assert main(["--root", str(root), "--target", "IJBC", "--model", str(path), "--arch", "r18",
                 "--out", str(tmp_path / "hint")]) == 2
    err = capsys.readouterr().err
    hint = [line for line in err.splitlines() if "model (--model): try" in line]
    assert len(hint) == 1 and "--model-option width=0.125" in hint[0] and "--model-option embedding_size=16" in hint[0]
    assert "Traceback" not in err and not (tmp_path / "hint" / "features.npy").exists()


def test_no_flip_embeds_the_image_only(ijb_root, tiny_model, tmp_path) -> None:
    root, info = ijb_root
    path, model = tiny_model
    options = [f"--model-option={k}={v}" for k, v in OPTIONS.items()]
    assert main(["--root", str(root), "--target", "IJBC", "--model", str(path), "--arch", "r18", *options,
                 "--no-flip", "--out", str(tmp_path / "nf")]) == 0
    feats = np.load(tmp_path / "nf" / "features.npy")
    line = (root / "meta" / "ijbc_name_5pts_score.txt").read_text().splitlines()[0].split(" ")
    img = cv2.imread(str(root / "loose_crop" / line[0]))
    lmk = np.array([float(v) for v in line[1:-1]], dtype=np.float32).reshape(5, 2)
    blob = torch.Tensor(ref_embedding_get(img, lmk, src=arcface_dst))
    with torch.no_grad():
        expected, flipped = model(blob.div(255).sub(0.5).div(0.5)).numpy()
    np.testing.assert_allclose(feats[0], expected, rtol=1e-5, atol=1e-5)
    assert np.abs(feats[0] - (expected + flipped)).max() > 0.1


# ----------------------------------------------------------------------------- bad input
def _copy_set(src: Path, dst: Path) -> Path:
    import shutil
    shutil.copytree(src, dst)
    return dst


def _run_bad(root: Path, tmp_path: Path, capsys, *extra: str) -> str:
    args = ["--root", str(root), "--target", "IJBC", "--out", str(tmp_path / "bad_out")]
    if "--model" not in extra and "--features" not in extra:
        feats = tmp_path / "ok.npy"
        if not feats.exists():
            n = len((root / "meta" / "ijbc_name_5pts_score.txt").read_text().splitlines())
            np.save(feats, np.ones((n, 4), np.float32))
        args += ["--features", str(feats)]
    assert main(args + list(extra)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def _edit_line(path: Path, line: int, new: str) -> None:
    lines = path.read_text().splitlines()
    lines[line - 1] = new
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("name,line,new,expected", [
    ("ijbc_name_5pts_score.txt", 3, "3.jpg 1 2 3 4 5 6 7 8 9 0.9", "expected 12 fields"),
    ("ijbc_name_5pts_score.txt", 4, "4.jpg 1 2 3 4 5 6 7 8 9 x 0.9", "'x' is not a number"),
    ("ijbc_face_tid_mid.txt", 5, "5.jpg 1", "expected 3 fields"),
    ("ijbc_face_tid_mid.txt", 6, "6.jpg one 2", "'one' is not an integer"),
    ("ijbc_template_pair_label.txt", 7, "1 2 1 9", "expected 3 fields"),
    ("ijbc_template_pair_label.txt", 8, "1 2", "expected 3 fields"),
    ("ijbc_template_pair_label.txt", 9, "1 2 7", "label 7 is not 0 or 1"),
    ("ijbc_template_pair_label.txt", 10, "1 999 0", "template 999 has no image"),
    ("ijbc_1N_probe_mixed.csv", 3, "2,0", "expected 3 fields"),
    ("ijbc_1N_gallery_G1.csv", 2, "555,0,x.jpg", "template 555 has no image"),
])
def test_bad_meta_line_names_file_and_line(ijb_root, tmp_path, capsys, name, line, new, expected) -> None:
    root = _copy_set(ijb_root[0], tmp_path / "IJBC")
    path = root / "meta" / name
    if name != "ijbc_name_5pts_score.txt" and name != "ijbc_face_tid_mid.txt":
        pass
    else:  # keep the names of the two per-image files in step
        old = path.read_text().splitlines()[line - 1].split()[0]
        new = new.replace(new.split()[0], old, 1)
    _edit_line(path, line, new)
    err = _run_bad(root, tmp_path, capsys)
    assert f"{name}:{line}:" in err and expected in err, err


def test_bad_inputs_each_give_one_line(ijb_root, tmp_path, capsys) -> None:
    root = _copy_set(ijb_root[0], tmp_path / "IJBC")
    n = len((root / "meta" / "ijbc_name_5pts_score.txt").read_text().splitlines())
    # features file with the wrong row count
    np.save(tmp_path / "short.npy", np.ones((n - 1, 4), np.float32))
    err = _run_bad(root, tmp_path, capsys, "--features", str(tmp_path / "short.npy"))
    assert "short.npy" in err and f"{n - 1} rows" in err and f"lists {n} images" in err
    # an object array is refused (no unpickling)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert "obj.npy" in _run_bad(root, tmp_path, capsys, "--features", str(tmp_path / "obj.npy"))
    # an image that does not decode (model path), reported with its 5pts line
    first = (root / "meta" / "ijbc_name_5pts_score.txt").read_text().splitlines()[1].split()[0]
    (root / "loose_crop" / first).write_bytes(b"not a jpeg")
    err = _run_bad(root, tmp_path, capsys, "--model", str(tmp_path / "nope.onnx"))
    assert "nope.onnx" in err  # the model is opened first
    onnx_backbone = pytest.importorskip("facekd.models.onnx_backbone")
    model = build_backbone("r18", **OPTIONS).eval()
    onnx_path = onnx_backbone.export_onnx(model, tmp_path / "m.onnx")
    err = _run_bad(root, tmp_path, capsys, "--model", str(onnx_path), "--workers", "1")
    assert first in err and "ijbc_name_5pts_score.txt:2" in err and "does not decode" in err
    # the two per-image files disagree on an image name
    _edit_line(root / "meta" / "ijbc_face_tid_mid.txt", 2, "zzz.jpg 1 1")
    err = _run_bad(root, tmp_path, capsys)
    assert "ijbc_face_tid_mid.txt:2" in err and "zzz.jpg" in err
    # a missing meta file; then a partial 1:N set
    (root / "meta" / "ijbc_face_tid_mid.txt").unlink()
    assert "ijbc_face_tid_mid.txt: missing meta file" in _run_bad(root, tmp_path, capsys)
    root2 = _copy_set(ijb_root[0], tmp_path / "IJBC2")
    (root2 / "meta" / "ijbc_1N_gallery_G2.csv").unlink()
    assert "ijbc_1N_gallery_G2.csv: missing 1:N file" in _run_bad(root2, tmp_path, capsys)


def test_without_1n_files_there_is_no_identification(ijb_root, tmp_path) -> None:
    root = _copy_set(ijb_root[0], tmp_path / "IJBC")
    for name in ("ijbc_1N_gallery_G1.csv", "ijbc_1N_gallery_G2.csv", "ijbc_1N_probe_mixed.csv"):
        (root / "meta" / name).unlink()
    n = len((root / "meta" / "ijbc_name_5pts_score.txt").read_text().splitlines())
    np.save(tmp_path / "f.npy", np.random.default_rng(0).standard_normal((n, 8)).astype(np.float32))
    assert main(["--root", str(root), "--target", "IJBC", "--features", str(tmp_path / "f.npy"),
                 "--out", str(tmp_path / "o")]) == 0
    report = json.loads((tmp_path / "o" / "ijb.json").read_text())
    assert list(report) == ["target", "images", "templates", "pairs", "verification"]
