"""facekd.eval.identification: exact search vs numpy, metrics by hand, approximate recall, failure modes."""
from __future__ import annotations

import json

import numpy as np
import pytest

from facekd.eval.identification import (DimensionMismatchError, EmptyGalleryError, GalleryIndex,
                                        IndexFileError, IndexOptions, InvalidEmbeddingError,
                                        MissingLabelsError, add_distractors, cmc, default_kind,
                                        default_nlist, identification_metrics, identity_ranks,
                                        recall_at_1, tpir_at_fpir)
from facekd.eval.identify import main as identify_main


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _clustered(n_ids: int, per_id: int, dim: int, noise: float, seed: int, n_probe_per_id: int = 1,
               extra_probe_ids: int = 0):
    """Identity centres on the sphere; gallery and probes = centre + noise. Extra ids are non-mated."""
    rng = np.random.default_rng(seed)
    centres = _unit(rng.normal(size=(n_ids + extra_probe_ids, dim)))
    g_lab = np.repeat(np.arange(n_ids), per_id)
    gallery = _unit(centres[g_lab] + noise * rng.normal(size=(g_lab.size, dim)) / np.sqrt(dim))
    p_lab = np.repeat(np.arange(n_ids + extra_probe_ids), n_probe_per_id)
    probes = _unit(centres[p_lab] + noise * rng.normal(size=(p_lab.size, dim)) / np.sqrt(dim))
    return gallery, g_lab, probes, p_lab


def test_exact_rank1_equals_numpy_argmax() -> None:
    gallery, g_lab, probes, p_lab = _clustered(150, 3, 32, noise=1.2, seed=0)
    index = GalleryIndex.build(gallery, g_lab, "flat", show_progress=False)
    scores, ids = index.search(probes, 5, show_progress=False)
    brute = probes @ gallery.T
    np.testing.assert_array_equal(ids[:, 0], np.argmax(brute, axis=1))
    np.testing.assert_allclose(scores[:, 0], brute.max(axis=1), rtol=1e-5, atol=1e-5)
    result = identification_metrics(index, probes, p_lab, show_progress=False)
    expected_rank1 = np.mean(g_lab[np.argmax(brute, axis=1)] == p_lab)
    assert 0.3 < expected_rank1 < 1.0  # the task is neither trivial nor hopeless
    assert result["cmc"]["rank1"] == pytest.approx(expected_rank1)
    assert result["cmc"]["rank1"] <= result["cmc"]["rank5"] <= result["cmc"]["rank10"]
    assert result["recall_at_1"] == 1.0


def test_identity_ranks_count_each_identity_once() -> None:
    hits = np.array([[7, 7, 3, 3, 5], [1, 2, 3, 4, 5], [9, 9, 9, 9, 9]])
    ranks = identity_ranks(hits, np.array([3, 5, 4]))
    np.testing.assert_array_equal(ranks, [2, 5, 0])
    np.testing.assert_allclose(cmc(ranks, 5), [0, 1 / 3, 1 / 3, 1 / 3, 2 / 3])


def test_tpir_at_fpir_by_hand() -> None:
    nonmated = np.arange(100) / 100.0  # 0.00 .. 0.99
    mated = np.array([0.995, 0.97, 0.5, 0.92])
    correct = np.array([True, True, True, False])
    tpir, fpir, thr = tpir_at_fpir(mated, correct, nonmated, 0.05)
    assert thr == pytest.approx(0.94) and fpir == pytest.approx(0.05)
    assert tpir == pytest.approx(0.5)  # 0.995 and 0.97 pass; 0.92 is wrong anyway


def test_open_set_metrics_reported_with_nonmated_probes() -> None:
    gallery, g_lab, probes, p_lab = _clustered(200, 2, 32, noise=0.8, seed=1, extra_probe_ids=200)
    index = GalleryIndex.build(gallery, g_lab, "flat", show_progress=False)
    r = identification_metrics(index, probes, p_lab, show_progress=False)
    assert r["n_mated"] == 200 and r["n_nonmated"] == 200
    assert set(r["tpir_at_fpir"]) == {"1e-01", "1e-02"}
    assert 0.9 < r["tpir_at_fpir"]["1e-01"]["tpir"] <= r["cmc"]["rank1"]
    assert r["tpir_at_fpir"]["1e-02"]["fpir"] <= 0.01


def test_tpir_skipped_without_enough_nonmated() -> None:
    gallery, g_lab, probes, p_lab = _clustered(50, 2, 16, noise=0.5, seed=2, extra_probe_ids=20)
    r = identification_metrics(GalleryIndex.build(gallery, g_lab, "flat", show_progress=False), probes, p_lab,
                               show_progress=False)
    assert "1e-01" in r["tpir_at_fpir"] and "1e-02" in r["tpir_at_fpir_skipped"]


@pytest.mark.parametrize("kind,options", [
    ("hnsw", IndexOptions(hnsw_m=16, ef_search=64)),
    ("ivf", IndexOptions(nlist=64, nprobe=8)),
    ("IVF64,SQ8", IndexOptions(nprobe=8, rerank=4)),
    ("ivfpq", IndexOptions(nlist=64, nprobe=8)),  # exact re-ranking on by default
])
def test_approximate_indexes_recall_on_clustered_data(kind: str, options: IndexOptions) -> None:
    gallery, g_lab, probes, p_lab = _clustered(2000, 2, 64, noise=0.6, seed=3)
    index = GalleryIndex.build(gallery, g_lab, kind, options, show_progress=False)
    r = identification_metrics(index, probes[:500], p_lab[:500], gallery_for_exact=gallery, show_progress=False)
    # the top-1 of the top-50 candidate search (what recall_at_1 measured before it became the
    # recall of a k=1 search); a top-1 search re-ranks fewer candidates and can only do worse
    assert r["candidate_search_recall_at_1"] >= 0.95
    assert 0.9 <= r["recall_at_1"] <= r["candidate_search_recall_at_1"] and r["recall_search_k"] == 1
    assert r["cmc"]["rank1"] >= 0.95


def test_recall_at_1_counts_misses_and_ties() -> None:
    exact_ids, exact_scores = np.array([[1], [2], [3]]), np.array([[0.9], [0.8], [0.7]], np.float32)
    approx_ids, approx_scores = np.array([[1], [5], [6]]), np.array([[0.9], [0.8], [0.6]], np.float32)
    assert recall_at_1(approx_ids, approx_scores, exact_ids, exact_scores) == pytest.approx(2 / 3)


def test_save_load_round_trip(tmp_path) -> None:
    gallery, g_lab, probes, _ = _clustered(100, 2, 16, noise=0.5, seed=4)
    index = GalleryIndex.build(gallery, g_lab, "hnsw", IndexOptions(hnsw_m=8, ef_search=32), show_progress=False)
    index.save(tmp_path / "idx")
    loaded = GalleryIndex.load(tmp_path / "idx")
    assert loaded.kind == "hnsw" and loaded.size == 200 and loaded.options.ef_search == 32
    np.testing.assert_array_equal(loaded.labels, g_lab)
    a = index.search(probes, 3, show_progress=False)
    b = loaded.search(probes, 3, show_progress=False)
    np.testing.assert_array_equal(a[1], b[1])
    (tmp_path / "idx" / "labels.npy").unlink()
    with pytest.raises(IndexFileError, match="labels.npy"):
        GalleryIndex.load(tmp_path / "idx")


def test_distractors_get_their_own_identities() -> None:
    gallery, g_lab, probes, p_lab = _clustered(50, 1, 16, noise=0.3, seed=5)
    extra = _unit(np.random.default_rng(6).normal(size=(300, 16)))
    big, big_lab = add_distractors(gallery, g_lab, extra)
    assert big.shape == (350, 16) and len(set(big_lab[50:].tolist())) == 300 and big_lab[50:].max() < 0
    r = identification_metrics(GalleryIndex.build(big, big_lab, "flat", show_progress=False), probes, p_lab,
                               show_progress=False)
    assert r["n_mated"] == 50 and r["cmc"]["rank1"] > 0.9


def test_default_index_choice_by_size() -> None:
    assert default_kind(10_000) == "flat" and default_kind(5_000_000) != "flat"
    assert default_nlist(1_000_000) == 8192 and default_nlist(2_000) * 39 <= 2_000
    from facekd.eval.identification import default_nlist_pq
    assert default_nlist_pq(300_000) == 2048 and default_nlist_pq(100) == 16


def test_bad_inputs_raise_clear_errors() -> None:
    g = _unit(np.random.default_rng(7).normal(size=(10, 8)))
    labels = np.arange(10)
    with pytest.raises(EmptyGalleryError, match="no embeddings"):
        GalleryIndex.build(np.zeros((0, 8), np.float32), [], "flat")
    bad = g.copy()
    bad[3, 2] = np.nan
    with pytest.raises(InvalidEmbeddingError, match="NaN"):
        GalleryIndex.build(bad, labels, "flat")
    with pytest.raises(MissingLabelsError, match="10 labels"):
        GalleryIndex.build(g, labels[:5], "flat")
    index = GalleryIndex.build(g, labels, "flat", show_progress=False)
    with pytest.raises(DimensionMismatchError, match="dimension 4"):
        index.search(np.ones((2, 4), np.float32))
    with pytest.raises(MissingLabelsError, match="required"):
        identification_metrics(index, g, None)
    with pytest.raises(InvalidEmbeddingError, match="zeros"):
        identification_metrics(index, np.zeros((2, 8), np.float32), [0, 1])


def test_cli_with_npy_embeddings(tmp_path, capsys) -> None:
    gallery, g_lab, probes, p_lab = _clustered(300, 2, 32, noise=0.6, seed=8, extra_probe_ids=100)
    np.save(tmp_path / "gallery.npy", gallery)
    np.save(tmp_path / "gallery_labels.npy", g_lab)
    np.save(tmp_path / "probes.npy", probes)
    np.save(tmp_path / "probes_labels.npy", p_lab)
    np.save(tmp_path / "distractors.npy", _unit(np.random.default_rng(9).normal(size=(500, 32))))
    rc = identify_main(["--gallery", str(tmp_path / "gallery.npy"), "--probes", str(tmp_path / "probes.npy"),
                        "--distractors", str(tmp_path / "distractors.npy"), "--index", "hnsw",
                        "--save-index", str(tmp_path / "idx"), "--out", str(tmp_path / "out")])
    assert rc == 0
    report = json.loads((tmp_path / "out" / "identification.json").read_text())
    assert report["gallery_size"] == 1100 and report["n_nonmated"] == 100
    assert report["recall_at_1"] > 0.95 and report["cmc"]["rank1"] > 0.9
    assert "CMC" in capsys.readouterr().out
    rc = identify_main(["--load-index", str(tmp_path / "idx"), "--probes", str(tmp_path / "probes.npy"),
                        "--out", str(tmp_path / "out2")])
    loaded = json.loads((tmp_path / "out2" / "identification.json").read_text())
    assert rc == 0 and loaded["cmc"] == report["cmc"]


def test_cli_reports_unlabeled_probes(tmp_path, capsys) -> None:
    gallery, g_lab, probes, _ = _clustered(20, 1, 8, noise=0.5, seed=10)
    np.save(tmp_path / "g.npy", gallery)
    np.save(tmp_path / "g_labels.npy", g_lab)
    np.save(tmp_path / "p.npy", probes)
    rc = identify_main(["--gallery", str(tmp_path / "g.npy"), "--probes", str(tmp_path / "p.npy")])
    assert rc == 2
    assert "no identity labels" in capsys.readouterr().err


def test_ivfpq_reranks_exactly_by_default() -> None:
    import faiss
    gallery, g_lab, probes, _ = _clustered(600, 2, 32, noise=0.6, seed=11)
    index = GalleryIndex.build(gallery, g_lab, "ivfpq", IndexOptions(nlist=16, nprobe=16), show_progress=False)
    assert isinstance(index.index, faiss.IndexRefine) and index.index.k_factor == 4
    scores, ids = index.search(probes[:50], 3, show_progress=False)
    np.testing.assert_allclose(scores, np.take_along_axis(probes[:50] @ gallery.T, ids, 1), atol=1e-5)
    off = GalleryIndex.build(gallery, g_lab, "ivfpq", IndexOptions(nlist=16, rerank=0), show_progress=False)
    assert not isinstance(off.index, faiss.IndexRefine)


# ---- search tuning to a recall target -------------------------------------------------------------
def _face_like(n_ids: int, per_id: int, n_probes: int, dim: int = 128, latent: int = 16, seed: int = 0):
    """Identities in a low-dimensional subspace (as deep face features), a small isotropic residual."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(dim, latent)))[0]
    centres = rng.normal(size=(n_ids, latent))

    def draw(labels):
        z = centres[labels] + 0.5 * rng.normal(size=(labels.size, latent))
        return _unit(z @ basis.T / np.sqrt(latent) + 0.3 * rng.normal(size=(labels.size, dim)) / np.sqrt(dim))
    g_lab = np.repeat(np.arange(n_ids), per_id)
    p_lab = rng.integers(0, n_ids, n_probes)
    return draw(g_lab), g_lab, draw(p_lab), p_lab


def test_tuning_reaches_the_target_on_held_out_probes() -> None:
    from facekd.eval.identification_tuning import confident_recall, tuned_index
    gallery, g_lab, probes, p_lab = _face_like(25_000, 2, 3000, seed=21)
    index = GalleryIndex.build(gallery, g_lab, "ivfpq", IndexOptions(nlist=256), show_progress=False)
    index, tuning, rows = tuned_index(index, gallery, probes, target_recall=0.99, sample=1000)
    assert tuning.fallback is None and index.kind == "ivfpq" and rows.size == 1000
    # accepted when the 95% lower bound of its recall on the 1000 sampled probes reaches the target
    assert set(tuning.setting) == {"nprobe", "rerank"} and confident_recall(tuning.recall_at_1, 1000) >= 0.99
    assert confident_recall(0.995, 1000) == pytest.approx(0.995 - 1.645 * np.sqrt(0.995 * 0.005 / 1000))
    # the chosen setting is the fastest of the trials that reached the target, and is in force
    reached = [t for t in tuning.trials if confident_recall(t["recall_at_1"], 1000) >= 0.99]
    assert min(reached, key=lambda t: t["seconds_per_query"])["nprobe"] == tuning.setting["nprobe"]
    assert index.options.nprobe == tuning.setting["nprobe"] and index.index.k_factor == tuning.setting["rerank"]
    # each walk stops at its first setting reaching the target: lower nprobe of that depth fell short
    same_depth = [t for t in tuning.trials if t["rerank"] == tuning.setting["rerank"]]
    assert all(confident_recall(t["recall_at_1"], 1000) < 0.99 for t in same_depth[:-1])
    assert [t["nprobe"] for t in same_depth] == sorted(t["nprobe"] for t in same_depth)
    r = identification_metrics(index, probes, p_lab, gallery_for_exact=gallery, recall_exclude=rows,
                               show_progress=False)
    assert r["recall_queries"] == 2000 and r["recall_search_k"] == 1
    assert r["recall_at_1"] >= 0.98  # 2000 held-out probes: the target up to sampling noise
    d = tuning.as_dict()
    assert d["speedup_vs_exact"] == pytest.approx(d["exact_seconds_per_query"] / d["seconds_per_query"])


def test_tuning_falls_back_to_exact_search() -> None:
    from facekd.eval.identification_tuning import tuned_index
    gallery, g_lab, probes, _ = _clustered(400, 2, 32, noise=0.9, seed=22)
    index = GalleryIndex.build(gallery, g_lab, "hnsw", IndexOptions(hnsw_m=8), show_progress=False)
    index, tuning, _ = tuned_index(index, gallery, probes, target_recall=1.01, sample=200)
    assert index.kind == "flat" and tuning.index == "flat" and tuning.setting == {}
    assert "no approximate setting reached" in tuning.fallback and len(tuning.trials) >= 1
    scores, ids = index.search(probes[:20], 1, show_progress=False)
    np.testing.assert_array_equal(ids[:, 0], np.argmax(probes[:20] @ gallery.T, axis=1))


def test_cli_tunes_by_default_and_reports_the_setting(tmp_path, capsys) -> None:
    gallery, g_lab, probes, p_lab = _clustered(3000, 2, 32, noise=0.8, seed=23)
    np.save(tmp_path / "g.npy", gallery)
    np.save(tmp_path / "g_labels.npy", g_lab)
    np.save(tmp_path / "p.npy", probes)
    np.save(tmp_path / "p_labels.npy", p_lab)
    args = ["--gallery", str(tmp_path / "g.npy"), "--probes", str(tmp_path / "p.npy"), "--index", "ivf",
            "--nlist", "64", "--tune-queries", "1000"]
    assert identify_main(args + ["--out", str(tmp_path / "a")]) == 0
    report = json.loads((tmp_path / "a" / "identification.json").read_text())
    tuning = report["search_tuning"]
    assert tuning["target_recall"] == 0.99 and tuning["queries"] == 1000
    if tuning["fallback"] is None:
        assert report["index"] == "ivf" and tuning["recall_at_1"] >= 0.99 and "nprobe" in tuning["setting"]
        assert report["recall_queries"] == 2000 and report["recall_at_1"] >= 0.97
    else:  # exact search was faster on this machine: the run used it
        assert report["index"] == "flat" and report["recall_at_1"] == 1.0
    assert "search tuned to recall@1 >= 0.99" in capsys.readouterr().out
    # an explicit search parameter is respected: no tuning
    assert identify_main(args + ["--nprobe", "2", "--out", str(tmp_path / "b")]) == 0
    report = json.loads((tmp_path / "b" / "identification.json").read_text())
    assert report["search_tuning"] == {"skipped": "search set by --nprobe", "index": "ivf"}
    assert report["recall_at_1"] < 0.99  # 2 of 64 lists: the honest top-1 recall shows it
