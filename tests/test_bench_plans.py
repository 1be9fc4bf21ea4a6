"""The accuracy benchmarks' plans and verdicts (no training): method selection, the goal verdict
with its per-seed count, and the SRD study's variant table."""
from __future__ import annotations

import pytest

from bench import bench_distill_accuracy as acc
from bench import bench_srd_study as study


def test_list_prints_the_plan_without_training(capsys):
    assert acc.main(["--list", "--methods", "srd,kd_pool", "--train-ids", "1000"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["alone", "srd", "kd_pool"]
    assert "128 labeled + 128 unlabeled (pool)" in lines[2]


def test_unknown_method_or_variant_names_the_known_ones():
    with pytest.raises(SystemExit, match="known: alone"):
        acc.select_methods("srd,nope")
    with pytest.raises(SystemExit, match="unknown variant"):
        study.select("srd,nope")


def test_verdict_counts_seeds_against_the_best_rival():
    text = acc.verdict_text({"alone": [0.88, 0.89, 0.90], "kd": [0.92, 0.93, 0.92], "cosine": [0.90, 0.90, 0.91],
                             "srd": [0.93, 0.92, 0.95]}, alone=0.89, gap=0.06)
    assert "best kd 0.9233" in text and "above it on 2 of 3 seeds" in text
    assert "srd closes 72% of the teacher-student gap" in text
    assert "with the same pool: not run" in text


def test_study_variants_are_unique_and_cover_the_defaults():
    keys = [v.key for v in study.VARIANTS]
    assert len(keys) == len(set(keys))
    assert {"srd", "srd_pool", "kd", "kd_pool"} <= set(keys)
    assert all(v.pool == v.key.endswith("_pool") for v in study.VARIANTS)
