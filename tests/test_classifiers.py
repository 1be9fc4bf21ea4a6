"""Classification models: logits/feature-map/pooled interface, RepDistiller and torchvision key
compatibility, post-activation feature maps, strict round trips."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from facekd.models.outputs import ClassifierOutput
from facekd.models.registry import backbone_kind, build_backbone, list_backbones
from facekd.models.scaling import InvalidModelOptionError

CLASSIFIERS = ["resnet8x4", "resnet32x4", "resnet20", "resnet56", "wrn_40_2", "wrn_40_1", "wrn_16_2",
               "resnet18", "mobilenet_v2"]
FEATURE_CHANNELS = {"resnet8x4": 256, "resnet32x4": 256, "resnet20": 64, "resnet56": 64,
                    "wrn_40_2": 128, "wrn_40_1": 64, "wrn_16_2": 128, "resnet18": 512,
                    "mobilenet_v2": 1280}


def test_registry_lists_classifiers() -> None:
    assert set(CLASSIFIERS) <= set(list_backbones("classifier"))
    assert all(backbone_kind(name) == "classifier" for name in CLASSIFIERS)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_classifier_interface(name: str) -> None:
    model = build_backbone(name, num_classes=10).eval()
    assert (model.arch, model.num_classes, model.feature_channels) == (name, 10, FEATURE_CHANNELS[name])
    assert isinstance(model.classifier, nn.Linear)
    assert (model.classifier.in_features, model.classifier.out_features) == (model.feature_channels, 10)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
        out = model(x, return_features=True)
    assert isinstance(out, ClassifierOutput)
    assert logits.shape == out.logits.shape == (2, 10)
    assert torch.equal(out.logits, logits)
    assert out.feature_map.dim() == 4 and out.feature_map.shape[:2] == (2, model.feature_channels)
    assert out.pooled.shape == (2, model.feature_channels)
    assert torch.allclose(out.pooled, out.feature_map.mean(dim=(2, 3)), atol=1e-6)
    assert torch.allclose(model.classifier(out.pooled), out.logits, atol=1e-5)
    assert out.feature_map.min() >= 0  # taken after the final (ReLU / ReLU6) activation


@pytest.mark.parametrize("name", ["resnet8x4", "wrn_16_2"])
def test_cifar_feature_maps_are_8x8_at_32px(name: str) -> None:
    model = build_backbone(name).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32), return_features=True)
    assert out.feature_map.shape[-2:] == (8, 8) and out.logits.shape == (2, 100)
    with torch.no_grad():  # pooling is global, so other sizes work too
        assert model(torch.randn(1, 3, 64, 64), return_features=True).feature_map.shape[-2:] == (16, 16)


def test_cifar_resnet_feature_map_is_post_relu_layer3() -> None:
    model = build_backbone("resnet8x4").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x, return_features=True)
        stem = F.relu(model.bn1(model.conv1(x)))
        inner = model.layer2(model.layer1(stem))
        for block in model.layer3[:-1]:
            inner = block(inner)
        last = model.layer3[-1]
        layer3 = last(inner)
        shortcut = inner if last.downsample is None else last.downsample(inner)
        pre_activation = last.bn2(last.conv2(F.relu(last.bn1(last.conv1(inner))))) + shortcut
    assert torch.allclose(out.feature_map, layer3, atol=1e-6)
    assert torch.allclose(out.feature_map, F.relu(pre_activation), atol=1e-6)
    assert (pre_activation < 0).any()  # so post- and pre-activation maps really differ


def test_wrn_feature_map_is_bn_relu_of_block3() -> None:
    model = build_backbone("wrn_16_2").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x, return_features=True)
        block3 = model.block3(model.block2(model.block1(model.conv1(x))))
    assert torch.allclose(out.feature_map, F.relu(model.bn1(block3)), atol=1e-6)


def test_repdistiller_key_names_and_sizes() -> None:
    r8 = {k: tuple(v.shape) for k, v in build_backbone("resnet8x4").state_dict().items()}
    assert len(r8) == 62
    assert r8["conv1.weight"] == (32, 3, 3, 3)
    assert r8["layer1.0.conv1.weight"] == (64, 32, 3, 3)
    assert r8["layer1.0.downsample.0.weight"] == (64, 32, 1, 1)
    assert r8["layer3.0.downsample.1.running_var"] == (256,)
    assert r8["fc.weight"] == (100, 256)
    wrn = {k: tuple(v.shape) for k, v in build_backbone("wrn_40_2").state_dict().items()}
    assert wrn["block1.layer.0.convShortcut.weight"] == (32, 16, 1, 1)
    assert wrn["block2.layer.0.convShortcut.weight"] == (64, 32, 1, 1)
    assert "block1.layer.1.convShortcut.weight" not in wrn
    assert wrn["block3.layer.5.conv2.weight"] == (128, 128, 3, 3)
    assert wrn["bn1.weight"] == (128,) and wrn["fc.weight"] == (100, 128)
    params = {name: sum(p.numel() for p in build_backbone(name).parameters()) / 1e6
              for name in ("resnet8x4", "resnet32x4", "wrn_40_2", "wrn_16_2", "wrn_40_1")}
    assert params == pytest.approx({"resnet8x4": 1.23, "resnet32x4": 7.43, "wrn_40_2": 2.26,
                                    "wrn_16_2": 0.70, "wrn_40_1": 0.57}, abs=0.01)


@pytest.mark.parametrize("name, factory", [
    ("resnet18", torchvision.models.resnet18),
    ("mobilenet_v2", torchvision.models.mobilenet_v2),
])
def test_torchvision_models_keep_torchvision_keys_and_function(name: str, factory) -> None:
    ours = build_backbone(name, num_classes=7).eval()
    reference = factory(weights=None, num_classes=7).eval()
    assert list(ours.state_dict()) == list(reference.state_dict())
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ours(x), reference(x), atol=1e-6)


def test_mobilenet_classifier_is_the_linear_inside_torchvision_head() -> None:
    model = build_backbone("mobilenet_v2", num_classes=5)
    head = model.get_submodule("classifier.1")
    assert isinstance(head, nn.Linear) and model.classifier is head
    assert model.classifier.weight is model.state_dict(keep_vars=True)["classifier.1.weight"]
    assert model.get_parameter("classifier.1.bias") is model.classifier.bias
    assert isinstance(model.get_submodule("classifier"), nn.Sequential)  # torchvision's head


@pytest.mark.parametrize("name", ["resnet8x4", "wrn_40_1"])
def test_state_dict_round_trip(name: str, tmp_path) -> None:
    torch.manual_seed(1)
    source = build_backbone(name, num_classes=10)
    source.train()
    with torch.no_grad():  # one train-mode pass moves the BN running statistics off their defaults
        source(torch.randn(4, 3, 32, 32))
    source.eval()
    torch.save(source.state_dict(), tmp_path / "model.pth")
    torch.manual_seed(2)
    target = build_backbone(name, num_classes=10).eval()
    target.load_state_dict(torch.load(tmp_path / "model.pth", weights_only=True), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(source(x), target(x))


@pytest.mark.parametrize("name", ["resnet8x4", "wrn_16_2", "resnet18"])
def test_bad_num_classes_is_rejected(name: str) -> None:
    with pytest.raises(InvalidModelOptionError, match=f"{name}: num_classes must be an integer >= 1"):
        build_backbone(name, num_classes=0)
