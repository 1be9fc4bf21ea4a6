"""Every registered backbone, face or classifier, binary or float, meets the written interface."""
from __future__ import annotations

import pytest

from facekd.models.interface import (CLASSIFIER_OPTIONS, FACE_OPTIONS, ClassifierBackbone, FaceBackbone,
                                     interface_problems)
from facekd.models.registry import backbone_kind, build_backbone, list_backbones
from facekd.models.scaling import InvalidModelOptionError

TINY_FACE = {"embedding_size": 16, "input_size": 32, "width": 0.25, "dropout": 0.1}
TINY_CLASSIFIER = {"num_classes": 5, "input_size": 32}


def _tiny(name: str) -> dict:
    return dict(TINY_FACE if backbone_kind(name) == "face" else TINY_CLASSIFIER)


def test_option_tables_match_the_tiny_configs() -> None:
    assert set(FACE_OPTIONS) == set(TINY_FACE) and set(CLASSIFIER_OPTIONS) <= set(TINY_CLASSIFIER)
    assert {"mbf_bin", "resnet8x4_bin", "r50", "wrn_16_2", "resnet18"} <= set(list_backbones())


@pytest.mark.parametrize("name", list_backbones())
def test_registered_backbone_meets_the_interface(name: str) -> None:
    kind = backbone_kind(name)
    model = build_backbone(name, **_tiny(name))
    assert isinstance(model, FaceBackbone if kind == "face" else ClassifierBackbone)
    assert model.input_size == 32
    if kind == "face":
        assert model.embedding_size == 16
    else:
        assert model.num_classes == 5
    assert interface_problems(model, kind) == []


@pytest.mark.parametrize("name", list_backbones())
def test_bad_common_option_is_worded_the_same_everywhere(name: str) -> None:
    option = "embedding_size" if backbone_kind(name) == "face" else "num_classes"
    with pytest.raises(InvalidModelOptionError, match=rf"^{name}: {option} must be an integer >= 1, got 0$"):
        build_backbone(name, **{**_tiny(name), option: 0})
    with pytest.raises(InvalidModelOptionError, match=rf"^{name}: input_size must be an integer >= \d+, got 2$"):
        build_backbone(name, **{**_tiny(name), "input_size": 2})


def test_interface_problems_reports_a_broken_model() -> None:
    model = build_backbone("resnet8x4", **TINY_CLASSIFIER)
    model.feature_channels = 7
    problems = interface_problems(model, "classifier")
    assert any("feature_map should be" in p for p in problems) and any("pooled should be" in p for p in problems)
    del model.feature_channels
    assert "no integer attribute 'feature_channels'" in interface_problems(model, "classifier")
