"""The 'distillation is hurting' guard: the spread metric and the warnings it drives."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from facekd.distill.health import distillation_warnings, warn_if_hurting
from facekd.eval.verification import mean_pairwise_cosine


def test_mean_pairwise_cosine_equals_the_pairwise_loop():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(37, 16)) + 0.5
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    cos = unit @ unit.T
    expected = (cos.sum() - np.trace(cos)) / (37 * 36)
    assert mean_pairwise_cosine(emb) == pytest.approx(expected, abs=1e-12)


def test_mean_pairwise_cosine_tells_collapse_from_spread():
    rng = np.random.default_rng(1)
    spread = rng.normal(size=(500, 64))
    collapsed = np.ones((500, 64)) + 0.1 * rng.normal(size=(500, 64))
    assert abs(mean_pairwise_cosine(spread)) < 0.02
    assert mean_pairwise_cosine(collapsed) > 0.95
    assert np.isnan(mean_pairwise_cosine(spread[:1]))


def test_warnings_name_the_set_the_symptom_and_the_flags():
    healthy = {"lfw/accuracy": 0.93, "lfw/mean_cos": 0.05}
    assert distillation_warnings(healthy, "srd") == []
    chance = distillation_warnings({"lfw/accuracy": 0.51, "lfw/mean_cos": 0.1}, "srd")
    assert len(chance) == 1 and "'lfw'" in chance[0] and "near chance" in chance[0]
    assert "--warmup-steps" in chance[0] and "srd.beta" in chance[0]
    both = distillation_warnings({"a/accuracy": 0.55, "a/mean_cos": 0.9, "b/accuracy": 0.95, "b/mean_cos": 0.0},
                                 "srd")
    assert len(both) == 1 and "collapsed" in both[0] and "near chance" in both[0]


def test_warn_if_hurting_logs(caplog):
    with caplog.at_level(logging.WARNING, logger="facekd"):
        out = warn_if_hurting({"x/accuracy": 0.8, "x/mean_cos": 0.8}, "kd")
    assert out and any("collapsed" in r.getMessage() for r in caplog.records)
