"""IJB-C protocol speed: facekd.eval.ijb's template aggregation + pair scoring + ROC against arcface_torch's loops.

Meta files of exactly IJB-C's shape (227,630 images, 23,124 templates = 3,531 enrolment + 19,593
verification templates, 15,658,489 template pairs sorted by first template, 1-16 media per
template) are written once into ``--work-dir`` and read back with facekd's readers. Per-image
features are random (a direction per subject plus noise, random norms), times a random faceness
score. Each implementation then runs in its own child process on the same arrays, so that each
peak resident memory is its own:

* reference: eval_ijbc.py's ``image2template_feature`` (a ``np.unique``/``np.where`` pass per
  template and per media), ``verification`` (pairs in batches of 100k), sklearn ``roc_curve`` +
  ``auc`` and its TAR@FAR reading loop, transcribed below;
* facekd: ``facekd.eval.ijb_protocol`` (vectorised float32 aggregation, chunked scoring, the same ROC).

Same numbers: template features compared bit for bit, scores to 1e-9, the TAR@FAR table and AUC.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bench._report import ROOT, table, write_section

IJBC_SHAPE = {"images": 227_630, "templates": 23_124, "enrol": 3_531, "pairs": 15_658_489}
QUICK_SHAPE = {"images": 22_763, "templates": 2_312, "enrol": 353, "pairs": 1_565_849}
X_LABELS = [10 ** -6, 10 ** -5, 10 ** -4, 10 ** -3, 10 ** -2, 10 ** -1]
GOAL_SPEEDUP = 3.0
GOAL_TOLERANCE = 1e-9


# ----------------------------------------------------------------------------- data
def write_meta(root: Path, shape: dict[str, int], dim: int, seed: int = 0) -> None:
    """IJB-C-shaped meta files (5pts, tid_mid, pair list) and random features.npy under ``root``."""
    rng = np.random.default_rng(seed)
    n_img, n_t, n_enrol, n_pairs = shape["images"], shape["templates"], shape["enrol"], shape["pairs"]
    ids = np.sort(rng.choice(np.arange(1, 8 * n_t), n_t, replace=False))  # sparse template ids, as in IJB-C
    subject = np.concatenate([np.arange(n_enrol), rng.integers(0, n_enrol, n_t - n_enrol)])
    weights = rng.lognormal(0.0, 1.0, n_t)  # template sizes: long-tailed, every template >= 1 image
    sizes = 1 + rng.multinomial(n_img - n_t, weights / weights.sum())
    img_t = np.repeat(np.arange(n_t), sizes)
    n_media = np.minimum(1 + rng.poisson(2.0, n_t), 16)
    img_m = (rng.integers(0, 1 << 30, n_img) % n_media[img_t]) + 1000 * np.arange(n_t)[img_t]
    meta = root / "meta"
    meta.mkdir(parents=True, exist_ok=True)
    names = [f"{i + 1}.jpg" for i in range(n_img)]
    faceness = rng.uniform(0.3, 1.0, n_img)
    with open(meta / "ijbc_name_5pts_score.txt", "w") as fh:
        points = "38.3 51.7 73.5 51.5 56.0 71.7 41.5 92.4 70.7 92.2"
        fh.writelines(f"{n} {points} {s:.3f}\n" for n, s in zip(names, faceness))
    with open(meta / "ijbc_face_tid_mid.txt", "w") as fh:
        fh.writelines(f"{n} {ids[t]} {m}\n" for n, t, m in zip(names, img_t.tolist(), img_m.tolist()))
    verif = np.arange(n_enrol, n_t)
    genuine = np.stack([subject[verif], verif], 1)  # each verification template against its subject's enrolment
    t1 = rng.integers(0, n_enrol, n_pairs - genuine.shape[0])
    t2 = rng.integers(n_enrol, n_t, t1.size)
    same = subject[t1] == subject[t2]
    while same.any():  # impostor pairs only: the genuine ones are listed above
        t2[same] = rng.integers(n_enrol, n_t, int(same.sum()))
        same = subject[t1] == subject[t2]
    pairs = np.concatenate([genuine, np.stack([t1, t2], 1)])
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
    label = (subject[pairs[:, 0]] == subject[pairs[:, 1]]).astype(np.int64)
    with open(meta / "ijbc_template_pair_label.txt", "w") as fh:
        for s in range(0, n_pairs, 1 << 20):
            a, b, c = ids[pairs[s:s + (1 << 20), 0]].tolist(), ids[pairs[s:s + (1 << 20), 1]].tolist(), \
                label[s:s + (1 << 20)].tolist()
            fh.write("".join(f"{x} {y} {z}\n" for x, y, z in zip(a, b, c)))
    centres = rng.standard_normal((n_enrol, dim), dtype=np.float32)
    feats = np.empty((n_img, dim), np.float32)
    for s in range(0, n_img, 50_000):
        sl = slice(s, s + 50_000)
        x = centres[subject[img_t[sl]]] + 3.0 * rng.standard_normal((img_t[sl].size, dim), dtype=np.float32)
        feats[sl] = x * rng.uniform(0.2, 1.0, (x.shape[0], 1)).astype(np.float32)
    np.save(root / "features.npy", feats)


def prepare(work: Path, shape: dict[str, int], dim: int) -> tuple[float, dict[str, Any]]:
    """Write the data set once (cached by shape), read it with facekd's readers, store plain arrays."""
    from facekd.eval.ijb_meta import read_meta
    tag = work / f"ijbc_{shape['images']}_{shape['pairs']}_{dim}"
    if not (tag / "features.npy").is_file():
        print(f"writing an IJB-C-shaped set to {tag} (once)", flush=True)
        write_meta(tag, shape, dim)
    t0 = time.perf_counter()
    meta = read_meta(tag, "IJBC")
    read_s = time.perf_counter() - t0
    arrays = {"faceness": meta.images.faceness, "templates": meta.media.templates, "medias": meta.media.medias,
              "p1": meta.pairs.t1, "p2": meta.pairs.t2, "labels": meta.pairs.labels}
    for k, v in arrays.items():
        np.save(tag / f"arr_{k}.npy", v)
    info = {"dir": str(tag), "images": len(meta.images.names), "templates": int(np.unique(meta.media.templates).size),
            "pairs": int(meta.pairs.t1.size), "genuine": int(meta.pairs.labels.sum())}
    return read_s, info


# ----------------------------------------------------------------------------- arcface_torch's loops
def ref_image2template_feature(img_feats: np.ndarray, templates: np.ndarray, medias: np.ndarray):
    """eval_ijbc.py's image2template_feature (progress prints left out)."""
    import sklearn.preprocessing
    unique_templates = np.unique(templates)
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
        media_norm_feats = np.array(media_norm_feats)
        template_feats[count_template] = np.sum(media_norm_feats, axis=0)
    template_norm_feats = sklearn.preprocessing.normalize(template_feats)
    return template_norm_feats, unique_templates


def ref_verification(template_norm_feats, unique_templates, p1, p2):
    """eval_ijbc.py's verification: pairs in batches of 100k."""
    template2id = np.zeros((max(unique_templates) + 1, 1), dtype=int)
    for count_template, uqt in enumerate(unique_templates):
        template2id[uqt] = count_template
    score = np.zeros((len(p1),))
    total_pairs = np.array(range(len(p1)))
    batchsize = 100000
    sublists = [total_pairs[i:i + batchsize] for i in range(0, len(p1), batchsize)]
    for s in sublists:
        feat1 = template_norm_feats[template2id[p1[s]]]
        feat2 = template_norm_feats[template2id[p2[s]]]
        similarity_score = np.sum(feat1 * feat2, -1)
        score[s] = similarity_score.flatten()
    return score


def ref_tar_table(label, score) -> tuple[list[float], float]:
    """eval_ijbc.py's ROC and TAR@FAR row."""
    from sklearn.metrics import auc, roc_curve
    fpr, tpr, _ = roc_curve(label, score)
    roc_auc = auc(fpr, tpr)
    fpr = np.flipud(fpr)
    tpr = np.flipud(tpr)
    row = []
    for fpr_iter in np.arange(len(X_LABELS)):
        _, min_index = min(list(zip(abs(fpr - X_LABELS[fpr_iter]), range(len(fpr)))))
        row.append(float(tpr[min_index]))
    return row, float(roc_auc)


# ----------------------------------------------------------------------------- workers
def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker(name: str, data: Path) -> int:
    """Run one implementation on the stored arrays; write its timings, peak memory and results."""
    a = {k: np.load(data / f"arr_{k}.npy") for k in ("faceness", "templates", "medias", "p1", "p2", "labels")}
    feats = np.load(data / "features.npy")
    import sklearn.metrics  # noqa: F401  (imports outside the timed region, for both)
    import sklearn.preprocessing  # noqa: F401
    base = _rss_mib()
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    if name == "reference":
        x = feats * a["faceness"][:, np.newaxis]
        tfeats, uniq = ref_image2template_feature(x, a["templates"], a["medias"])
        t1 = time.perf_counter()
        scores = ref_verification(tfeats, uniq, a["p1"], a["p2"])
        t2 = time.perf_counter()
        peak_scoring = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        tar, roc_auc = ref_tar_table(a["labels"], scores)
    else:
        from facekd.eval.ijb_protocol import (TestMode, image_inputs, normalise_templates, pair_scores, tar_at_far,
                                              template_rows, template_sums)
        x = image_inputs(feats, a["faceness"], TestMode())
        uniq, sums = template_sums(x, a["templates"], a["medias"])
        tfeats = normalise_templates(sums)
        t1 = time.perf_counter()
        scores = pair_scores(tfeats, template_rows(uniq, a["p1"]), template_rows(uniq, a["p2"]))
        t2 = time.perf_counter()
        peak_scoring = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        tars, roc_auc, _, _ = tar_at_far(a["labels"], scores)
        tar = list(tars.values())
    t3 = time.perf_counter()
    times = {"aggregation": t1 - t0, "scoring": t2 - t1, "roc": t3 - t2, "total": t3 - t0}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    np.save(data / f"out_{name}_scores.npy", scores)
    np.save(data / f"out_{name}_templates.npy", tfeats)
    (data / f"out_{name}.json").write_text(json.dumps({"times": times, "tar": tar, "auc": roc_auc,
                                                       "rss_inputs_mib": base, "peak_rss_mib": peak,
                                                       "peak_rss_scoring_mib": peak_scoring}))
    return 0


def _run_worker(name: str, data: Path) -> dict[str, Any]:
    print(f"running {name} ...", flush=True)
    subprocess.run([sys.executable, "-m", "bench.bench_ijb", "--worker", name, "--data", str(data)],
                   cwd=ROOT, check=True)
    result = json.loads((data / f"out_{name}.json").read_text())
    print(f"{name}: {result['times']}, peak RSS {result['peak_rss_mib']:.0f} MiB", flush=True)
    return result


# ----------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    """Write the IJB-C-shaped set, time both implementations, compare, update docs/benchmarks.md."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a tenth of IJB-C's size (about a minute)")
    parser.add_argument("--dim", type=int, default=512, help="feature dimension")
    parser.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "facekd_bench_ijb"),
                        help="where the generated set is kept between runs")
    parser.add_argument("--worker", choices=("reference", "facekd"), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker, Path(args.data))
    shape = QUICK_SHAPE if args.quick else IJBC_SHAPE
    read_s, info = prepare(Path(args.work_dir), shape, args.dim)
    data = Path(info["dir"])
    print(f"set: {info}; facekd read the meta files in {read_s:.1f} s", flush=True)
    ours = _run_worker("facekd", data)
    ref = _run_worker("reference", data)
    s_ours, s_ref = np.load(data / "out_facekd_scores.npy"), np.load(data / "out_reference_scores.npy")
    t_ours, t_ref = np.load(data / "out_facekd_templates.npy"), np.load(data / "out_reference_templates.npy")
    score_diff = float(np.max(np.abs(s_ours - s_ref)))
    same_templates = bool(np.array_equal(t_ours, t_ref))
    same_tar = ours["tar"] == ref["tar"]
    auc_diff = abs(ours["auc"] - ref["auc"])
    rows = []
    for stage, label in (("aggregation", "template aggregation"), ("scoring", "pair scoring"),
                         ("roc", "ROC + TAR@FAR (sklearn roc_curve in both)"), ("total", "total")):
        rows.append([label, f"{ref['times'][stage]:.1f}", f"{ours['times'][stage]:.1f}",
                     f"{ref['times'][stage] / max(ours['times'][stage], 1e-9):.1f}x"])
    rows.append(["peak resident memory up to the end of scoring (MiB)", f"{ref['peak_rss_scoring_mib']:,.0f}",
                 f"{ours['peak_rss_scoring_mib']:,.0f}", "-"])
    rows.append(["peak resident memory, whole run (MiB; inputs alone)",
                 f"{ref['peak_rss_mib']:,.0f} ({ref['rss_inputs_mib']:,.0f})",
                 f"{ours['peak_rss_mib']:,.0f} ({ours['rss_inputs_mib']:,.0f})", "-"])
    speedup = ref["times"]["total"] / ours["times"]["total"]
    same = score_diff <= GOAL_TOLERANCE and same_tar and same_templates
    goal = (f"Goal (same numbers to {GOAL_TOLERANCE:g} at >= {GOAL_SPEEDUP:.0f}x): "
            f"{'met' if same and speedup >= GOAL_SPEEDUP else 'NOT met'}: {speedup:.1f}x; template features "
            f"{'bit-identical' if same_templates else 'DIFFER'}; max |score difference| {score_diff:.2e}; TAR@FAR "
            f"row {'identical' if same_tar else 'DIFFERS'}; |AUC difference| {auc_diff:.1e}.")
    tar_row = " / ".join(f"{x:g}: {v:.4f}" for x, v in zip(X_LABELS, ours["tar"]))
    body = (f"A set of IJB-C's shape ({info['images']:,} images, {info['templates']:,} templates, "
            f"{info['pairs']:,} pairs, {info['genuine']:,} genuine) with random {args.dim}-d features; each "
            f"implementation in its own process on the same arrays, one run each, default test mode "
            f"(F2/N1/D1); pairs scored in chunks of about 1M (facekd) and batches of 100k (reference). "
            f"The reference is arcface_torch's eval_ijbc.py loops transcribed in "
            f"bench/bench_ijb.py. The 2-core machine was shared with other jobs during this run, so "
            f"times are indicative. Reading the meta files with facekd's readers took {read_s:.1f} s "
            f"(not in the table).\n\n"
            + table(["stage", "arcface_torch loops (s)", "facekd (s)", "speed-up"], rows)
            + f"\n\nTAR@FAR (both): {tar_row}.\n\n{goal}")
    title = "IJB-C protocol: aggregation, scoring, ROC" + (" (quick: a tenth of IJB-C)" if args.quick else "")
    write_section("ijb", title, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
