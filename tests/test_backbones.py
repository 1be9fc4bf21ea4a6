"""Face backbones: shapes at tiny sizes, arcface_torch key names/shapes at the defaults, op order,
strict state-dict round trips, size-dependent heads, option validation and ONNX export."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from facekd.models.iresnet import IBasicBlock
from facekd.models.outputs import FaceOutput
from facekd.models.registry import UnknownModelError, backbone_kind, build_backbone, list_backbones
from facekd.models.scaling import InvalidModelOptionError, scale_channels

FACE_MODELS = ["r18", "r34", "r50", "r100", "r200", "mbf", "mbf_large"]
TINY = dict(input_size=32, width=0.125, embedding_size=16)


def _build_meta(name: str, **options: object) -> nn.Module:
    with torch.device("meta"):
        return build_backbone(name, **options)


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _randomise_(model: nn.Module) -> nn.Module:
    """Give BN statistics and affine parameters non-trivial values so a round trip means something."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
            elif isinstance(module, nn.PReLU):
                module.weight.uniform_(0.1, 0.4)
    return model


def test_registry_lists_face_models() -> None:
    assert set(FACE_MODELS) <= set(list_backbones("face"))
    assert all(backbone_kind(name) == "face" for name in FACE_MODELS)
    with pytest.raises(UnknownModelError, match="unknown model 'r101'"):
        build_backbone("r101")


@pytest.mark.parametrize("name", FACE_MODELS)
def test_tiny_face_backbone_shapes(name: str) -> None:
    model = build_backbone(name, **TINY).eval()
    assert (model.arch, model.input_size, model.embedding_size) == (name, 32, 16)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        embedding = model(x)
        out = model(x, return_features=True)
    assert embedding.shape == (2, 16)
    assert isinstance(out, FaceOutput)
    assert out.embedding.shape == (2, 16)
    assert out.feature_map.shape == (2, model.feature_channels, 2, 2)  # 32 -> 16 -> 8 -> 4 -> 2
    assert torch.equal(out.embedding, embedding)
    assert torch.isfinite(embedding).all()


def test_r18_published_keys_and_shapes() -> None:
    model = _build_meta("r18")
    shapes = _shapes(model)
    assert len(shapes) == 187
    expected = {
        "conv1.weight": (64, 3, 3, 3),
        "bn1.running_var": (64,),
        "prelu.weight": (64,),
        "layer1.0.bn1.weight": (64,),
        "layer1.0.conv1.weight": (64, 64, 3, 3),
        "layer1.0.prelu.weight": (64,),
        "layer1.0.bn3.num_batches_tracked": (),
        "layer1.0.downsample.0.weight": (64, 64, 1, 1),
        "layer1.0.downsample.1.running_mean": (64,),
        "layer2.0.conv1.weight": (128, 64, 3, 3),
        "layer4.0.downsample.0.weight": (512, 256, 1, 1),
        "layer4.1.conv2.weight": (512, 512, 3, 3),
        "bn2.weight": (512,),
        "fc.weight": (512, 25088),
        "fc.bias": (512,),
        "features.weight": (512,),
        "features.running_var": (512,),
    }
    assert {k: shapes[k] for k in expected} == expected
    assert "layer1.1.downsample.0.weight" not in shapes
    assert model.feature_channels == 512 and model.feature_size == 7


@pytest.mark.parametrize("name, num_keys, params_m", [
    ("r50", 475, 43.59), ("r100", 925, 65.16), ("r200", 1807, 118.83),
])
def test_big_iresnets_match_published_size(name: str, num_keys: int, params_m: float) -> None:
    model = _build_meta(name)
    assert len(model.state_dict()) == num_keys
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == params_m
    assert model.fc.weight.shape == (512, 512 * 7 * 7)


def test_mbf_published_keys_and_shapes() -> None:
    model = _build_meta("mbf")
    shapes = _shapes(model)
    assert len(shapes) == 333
    expected = {
        "layers.0.layers.0.weight": (128, 3, 3, 3),
        "layers.0.layers.1.running_mean": (128,),
        "layers.0.layers.2.weight": (128,),
        "layers.1.layers.0.weight": (128, 2, 3, 3),  # 64 groups
        "layers.2.layers.0.layers.0.weight": (128, 128, 1, 1),
        "layers.2.layers.1.layers.0.weight": (128, 1, 3, 3),
        "layers.2.layers.2.layers.0.weight": (128, 128, 1, 1),
        "layers.3.layers.3.layers.2.layers.1.running_var": (128,),
        "layers.4.layers.0.layers.0.weight": (256, 128, 1, 1),
        "layers.4.layers.2.layers.0.weight": (256, 256, 1, 1),
        "layers.6.layers.0.layers.0.weight": (512, 256, 1, 1),
        "layers.6.layers.1.layers.0.weight": (512, 1, 3, 3),
        "layers.7.layers.1.layers.0.layers.0.weight": (256, 256, 1, 1),
        "conv_sep.layers.0.weight": (512, 256, 1, 1),
        "conv_sep.layers.2.weight": (512,),
        "features.layers.0.layers.0.weight": (512, 1, 7, 7),
        "features.layers.0.layers.1.weight": (512,),
        "features.layers.2.weight": (512, 512),
        "features.layers.3.running_var": (512,),
    }
    assert {k: shapes[k] for k in expected} == expected
    assert "features.layers.2.bias" not in shapes
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(2.06e6, rel=0.01)


def test_mbf_large_published_size() -> None:
    model = _build_meta("mbf_large")
    shapes = _shapes(model)
    assert len(shapes) == 606
    assert shapes["layers.1.layers.1.layers.1.layers.0.weight"] == (128, 1, 3, 3)  # Residual, g=128
    assert shapes["conv_sep.layers.0.weight"] == (512, 512, 1, 1)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(6.31e6, rel=0.01)


def test_iresnet_op_order_matches_arcface() -> None:
    """Block: BN -> conv -> BN -> PReLU -> conv(stride) -> BN (+ downsample); head: BN2d -> fc -> BN1d."""
    model = _randomise_(build_backbone("r18", **TINY)).eval()
    x = torch.randn(2, 3, 32, 32)
    block: IBasicBlock = model.layer2[0]
    h = torch.randn(2, block.bn1.num_features, 8, 8)
    manual = block.bn3(block.conv2(block.prelu(block.bn2(block.conv1(block.bn1(h))))))
    with torch.no_grad():
        assert torch.allclose(block(h), manual + block.downsample(h), atol=1e-6)
        out = model(x, return_features=True)
        stem = model.prelu(model.bn1(model.conv1(x)))
        feature_map = model.layer4(model.layer3(model.layer2(model.layer1(stem))))
        head = model.features(model.fc(torch.flatten(model.bn2(feature_map), 1)))
    assert torch.allclose(out.feature_map, feature_map, atol=1e-6)
    assert torch.allclose(out.embedding, head, atol=1e-5)


def test_mbf_op_order_matches_arcface() -> None:
    """layers -> conv_sep (the feature map) -> GDC (depthwise kxk -> flatten -> Linear -> BN1d)."""
    model = _randomise_(build_backbone("mbf", **TINY)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x, return_features=True)
        h = x
        for layer in model.layers:
            h = layer(h)
        feature_map = model.conv_sep(h)
        gdc = model.features.layers
        head = gdc[3](gdc[2](torch.flatten(gdc[0](feature_map), 1)))
        residual = model.layers[3].layers[0]
        r_in = torch.randn(1, residual.layers[0].layers[0].in_channels, 4, 4)
        assert torch.allclose(residual(r_in), r_in + residual.layers(r_in), atol=1e-6)
    assert torch.allclose(out.feature_map, feature_map, atol=1e-6)
    assert torch.allclose(out.embedding, head, atol=1e-5)
    assert out.feature_map.shape == (2, model.feature_channels, 2, 2)


def test_iresnet_output_bn_scale_is_frozen() -> None:
    model = build_backbone("r18", **TINY)
    assert not model.features.weight.requires_grad
    assert torch.equal(model.features.weight, torch.ones(16))
    model(torch.randn(4, 3, 32, 32)).sum().backward()
    assert model.features.weight.grad is None
    assert model.fc.weight.grad is not None and model.features.bias.grad is not None


@pytest.mark.parametrize("name, options", [
    ("mbf", {}),  # the published shape: what a released backbone.pth loads into
    ("r18", TINY),
    ("mbf_large", TINY),
])
def test_state_dict_round_trip_is_strict_and_exact(name: str, options: dict, tmp_path) -> None:
    torch.manual_seed(1)
    source = _randomise_(build_backbone(name, **options)).eval()
    path = tmp_path / "backbone.pth"
    torch.save(source.state_dict(), path)
    torch.manual_seed(2)
    target = build_backbone(name, **options).eval()
    target.load_state_dict(torch.load(path, weights_only=True), strict=True)
    x = torch.randn(2, 3, source.input_size, source.input_size)
    with torch.no_grad():
        assert torch.equal(source(x), target(x))


@pytest.mark.parametrize("input_size, final", [(56, 4), (64, 4), (112, 7), (32, 2)])
def test_head_follows_input_size(input_size: int, final: int) -> None:
    r18 = build_backbone("r18", input_size=input_size, width=0.125, embedding_size=8)
    mbf = build_backbone("mbf", input_size=input_size, width=0.125, embedding_size=8)
    assert r18.fc.in_features == r18.feature_channels * final * final
    assert mbf.features.layers[0].layers[0].kernel_size == (final, final)
    x = torch.randn(2, 3, input_size, input_size)
    with torch.no_grad():
        for model in (r18.eval(), mbf.eval()):
            out = model(x, return_features=True)
            assert out.embedding.shape == (2, 8)
            assert out.feature_map.shape[-2:] == (final, final)


def test_width_scales_every_channel_count() -> None:
    assert [scale_channels(c, 1.0) for c in (64, 128, 256, 512)] == [64, 128, 256, 512]
    assert [scale_channels(c, 0.125) for c in (64, 128, 256, 512)] == [8, 16, 32, 64]
    assert scale_channels(64, 0.01) == 8 and scale_channels(100, 0.5) == 48
    r18 = build_backbone("r18", width=0.25)
    assert r18.conv1.out_channels == 16 and r18.feature_channels == 128
    mbf = build_backbone("mbf", width=0.25)
    shapes = _shapes(mbf)
    assert shapes["layers.0.layers.0.weight"] == (32, 3, 3, 3)
    assert shapes["layers.2.layers.1.layers.0.weight"] == (32, 1, 3, 3)  # group width 128 -> 32
    assert shapes["layers.6.layers.1.layers.0.weight"] == (128, 1, 3, 3)  # group width 512 -> 128
    assert mbf.feature_channels == 128


@pytest.mark.parametrize("options, message", [
    ({"width": 0}, "width must be a positive number"),
    ({"input_size": 8}, "input_size must be an integer >= 16"),
    ({"embedding_size": 0}, "embedding_size must be an integer >= 1"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
])
@pytest.mark.parametrize("name", ["r18", "mbf"])
def test_bad_options_raise_clear_errors(name: str, options: dict, message: str) -> None:
    with pytest.raises(InvalidModelOptionError, match=f"{name}: {message}"):
        build_backbone(name, **options)


def test_unknown_option_is_rejected() -> None:
    with pytest.raises(TypeError, match="num_classes"):
        build_backbone("r18", num_classes=10)


@pytest.mark.parametrize("name", ["r18", "mbf"])
def test_wrong_image_size_names_the_problem(name: str) -> None:
    model = build_backbone(name, **TINY)
    with pytest.raises(InvalidModelOptionError, match=r"built for \[N, 3, 32, 32\].*\[2, 3, 48, 48\]"):
        model(torch.randn(2, 3, 48, 48))
    with pytest.raises(InvalidModelOptionError, match=r"\[2, 1, 32, 32\]"):
        model(torch.randn(2, 1, 32, 32))


@pytest.mark.parametrize("name", ["r18", "mbf"])
def test_fp16_flag_has_no_effect_on_cpu(name: str) -> None:
    plain = build_backbone(name, **TINY).eval()
    half = build_backbone(name, fp16=True, **TINY).eval()
    half.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = half(x, return_features=True)
        assert torch.equal(out.embedding, plain(x))
    assert out.embedding.dtype == out.feature_map.dtype == torch.float32


def test_dropout_acts_only_in_training() -> None:
    model = _randomise_(build_backbone("r18", dropout=0.5, **TINY))
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        model.train()
        assert not torch.allclose(model(x), model(x))


@pytest.mark.parametrize("name", ["r18", "mbf"])
def test_onnx_export_matches_torch(name: str, tmp_path) -> None:
    """facekd's own export (facekd.models.onnx_backbone.export_onnx), run by plain onnxruntime."""
    ort = pytest.importorskip("onnxruntime")
    from facekd.models.onnx_backbone import INPUT_NAME, export_onnx

    model = _randomise_(build_backbone(name, **TINY)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    path = export_onnx(model, tmp_path / f"{name}.onnx")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is untouched
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [INPUT_NAME]
    x = torch.randn(3, 3, 32, 32)  # a batch other than the one traced: the batch axis is dynamic
    (onnx_out,) = session.run(None, {INPUT_NAME: x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(onnx_out, model(x).numpy(), rtol=1e-4, atol=1e-4)
    assert onnx_out.shape == (3, 16)
