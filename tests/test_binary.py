"""Binary students: sign/STE values and gradients, XNOR-exact binary convolutions, two-stage
switching with identical state dicts, backbone contracts, honest size accounting, ONNX export."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from facekd.models.binary_layers import (
    BinaryConv2d,
    BinaryStageError,
    RPReLU,
    RSign,
    binarize_weight,
    binary_convs,
    binary_stage_of,
    hard_sign,
    list_estimators,
    set_binary_stage,
    sign_ste,
)
from facekd.models.binary_nets import Shortcut
from facekd.models.outputs import ClassifierOutput, FaceOutput
from facekd.models.registry import backbone_kind, build_backbone, list_backbones
from facekd.models.scaling import InvalidModelOptionError
from facekd.models.summary import format_summary, main as summary_main, model_size_bytes, summarize

TINY_FACE = dict(input_size=32, width=0.125, embedding_size=16)
CLASSIFIERS = ["resnet20_bin", "resnet8x4_bin"]


def _randomise_bn_(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
            elif isinstance(module, (RSign, RPReLU)):
                for p in module.parameters():
                    if p.dim() == 4:
                        p.uniform_(-0.1, 0.1)
    return model


# ----------------------------------------------------------------------------------------------
# sign and straight-through estimators

X = torch.tensor([-1.5, -1.0, -0.5, -0.0, 0.0, 0.5, 1.0, 1.5])


def test_hard_sign_maps_zero_to_plus_one_and_keeps_dtype() -> None:
    assert hard_sign(X).tolist() == [-1, -1, -1, 1, 1, 1, 1, 1]
    assert hard_sign(X.double()).dtype == torch.float64
    assert hard_sign(X.half()).tolist() == [-1, -1, -1, 1, 1, 1, 1, 1]


@pytest.mark.parametrize("estimator, expected_grad", [
    ("clip", [0, 1, 1, 1, 1, 1, 1, 0]),        # clipped identity (BNN)
    ("approx", [0, 0, 1, 2, 2, 1, 0, 0]),      # 2 - 2|x| on [-1, 1] (Bi-Real ApproxSign)
])
def test_sign_ste_forward_and_gradient(estimator: str, expected_grad: list[float]) -> None:
    x = X.clone().requires_grad_(True)
    out = sign_ste(x, estimator)
    assert out.tolist() == [-1, -1, -1, 1, 1, 1, 1, 1]
    upstream = torch.arange(1.0, 9.0)
    out.backward(upstream)
    assert x.grad.tolist() == (upstream * torch.tensor(expected_grad, dtype=torch.float32)).tolist()


def test_unknown_estimator_and_stage_are_named() -> None:
    assert {"clip", "approx"} <= set(list_estimators())
    with pytest.raises(BinaryStageError, match="unknown sign estimator 'tanh'; known: approx, clip"):
        sign_ste(X, "tanh")
    with pytest.raises(BinaryStageError, match="binary stage must be one of"):
        set_binary_stage(nn.Identity(), 3)
    with pytest.raises(BinaryStageError, match="got True"):
        build_backbone("mbf_bin", stage=True, **TINY_FACE)


def test_binarize_weight_is_xnor_scaled_with_clipped_gradient() -> None:
    w = torch.tensor([[0.5, -0.25, 2.0, -1.25], [0.1, 0.3, -0.2, 0.0]]).view(2, 4, 1, 1).requires_grad_(True)
    out = binarize_weight(w)
    alpha = torch.tensor([(0.5 + 0.25 + 2.0 + 1.25) / 4, (0.1 + 0.3 + 0.2 + 0.0) / 4])
    expected = alpha.view(2, 1) * torch.tensor([[1.0, -1, 1, -1], [1, 1, -1, 1]])
    assert torch.allclose(out.view(2, 4), expected)
    upstream = torch.arange(1.0, 9.0).view(2, 4, 1, 1)
    out.backward(upstream)
    # alpha is detached: d out / d w = alpha_o * 1_{|w| <= 1}
    mask = torch.tensor([[1.0, 1, 0, 0], [1, 1, 1, 1]])
    assert torch.allclose(w.grad.view(2, 4), upstream.view(2, 4) * alpha.view(2, 1) * mask)


def test_rsign_threshold_and_rprelu_shifts() -> None:
    sign = RSign(2)
    with torch.no_grad():
        sign.shift.copy_(torch.tensor([0.5, -0.5]).view(1, 2, 1, 1))
    x = torch.tensor([0.4, 0.6, -0.4, -0.6]).view(1, 1, 2, 2).repeat(1, 2, 1, 1)
    out = sign(x)
    assert out[0, 0].flatten().tolist() == [-1, 1, -1, -1]   # threshold +0.5
    assert out[0, 1].flatten().tolist() == [1, 1, 1, -1]     # threshold -0.5
    out.sum().backward()
    # d/d beta = -1 where |x - beta| <= 1: x - beta is (-0.1, 0.1, -0.9, -1.1) and (0.9, 1.1, 0.1, -0.1)
    assert sign.shift.grad.flatten().tolist() == [-3.0, -3.0]
    sign.binary = False
    assert torch.allclose(sign(x), x - sign.shift)

    act = RPReLU(1, init_slope=0.25)
    with torch.no_grad():
        act.shift_in.fill_(1.0)
        act.shift_out.fill_(-2.0)
    y = act(torch.tensor([3.0, -1.0]).view(1, 1, 2, 1)).flatten()
    assert y.tolist() == [3.0 - 1 - 2, 0.25 * (-1.0 - 1) - 2]


# ----------------------------------------------------------------------------------------------
# binary convolution == integer XNOR-popcount reference

def _xnor_popcount_conv(x_pm1: torch.Tensor, w_pm1: torch.Tensor, stride: int) -> torch.Tensor:
    """Integer conv of +-1 tensors by bits: dot = n - 2 * popcount(a XOR w) (no padding)."""
    n_img, c_in, size, _ = x_pm1.shape
    c_out, _, k, _ = w_pm1.shape
    patches = F.unfold(x_pm1, k, stride=stride)                  # [N, C*k*k, L], values +-1
    a_bits = (patches > 0).transpose(1, 2).unsqueeze(2)          # [N, L, 1, n]
    w_bits = (w_pm1.view(c_out, -1) > 0).view(1, 1, c_out, -1)   # [1, 1, C_out, n]
    mismatches = (a_bits ^ w_bits).sum(-1, dtype=torch.int64)    # popcount of XOR
    dots = patches.shape[1] - 2 * mismatches                     # [N, L, C_out], int64
    out_size = (size - k) // stride + 1
    return dots.transpose(1, 2).reshape(n_img, c_out, out_size, out_size)


def _int_conv(x: torch.Tensor, w: torch.Tensor, stride: int, padding: int, groups: int) -> torch.Tensor:
    """Integer conv in int64 arithmetic, zero padding, grouped."""
    k = w.shape[-1]
    outs = []
    cin_g, cout_g = x.shape[1] // groups, w.shape[0] // groups
    for g in range(groups):
        patches = F.unfold(x[:, g * cin_g:(g + 1) * cin_g].float(), k, padding=padding, stride=stride).long()
        wg = w[g * cout_g:(g + 1) * cout_g].reshape(cout_g, -1).long()
        outs.append(torch.einsum("onl,bnl->bol", wg.unsqueeze(-1).expand(-1, -1, patches.shape[-1]), patches))
    out = torch.cat(outs, 1)
    size = (x.shape[-1] + 2 * padding - k) // stride + 1
    return out.view(x.shape[0], -1, size, size)


@pytest.mark.parametrize("stride", [1, 2])
def test_binary_conv_on_pm1_inputs_equals_xnor_popcount(stride: int) -> None:
    torch.manual_seed(0)
    conv = BinaryConv2d(12, 5, 3, stride=stride)
    x = hard_sign(torch.randn(2, 12, 9, 9))
    with torch.no_grad():
        out = conv(x)
    signs = hard_sign(conv.weight)
    alpha = conv.weight.abs().mean(dim=(1, 2, 3)).view(1, 5, 1, 1)
    reference = _xnor_popcount_conv(x, signs, stride)
    assert reference.dtype == torch.int64
    assert torch.equal(reference, _int_conv(x.long(), signs.long(), stride, 0, 1))
    assert torch.allclose(out, alpha * reference.float(), rtol=1e-5, atol=1e-5)
    assert torch.equal(torch.round(out / alpha).long(), reference)


def test_padded_grouped_binary_conv_equals_integer_reference() -> None:
    torch.manual_seed(1)
    conv = BinaryConv2d(8, 6, 3, stride=2, padding=1, groups=2)
    x = hard_sign(torch.randn(3, 8, 7, 7))
    with torch.no_grad():
        out = conv(x)
    alpha = conv.weight.abs().mean(dim=(1, 2, 3)).view(1, 6, 1, 1)
    reference = _int_conv(x.long(), hard_sign(conv.weight).long(), 2, 1, 2)
    assert torch.equal(torch.round(out / alpha).long(), reference)
    conv.binary_weights = False  # stage 1: the latent real weights are used as they are
    with torch.no_grad():
        assert torch.allclose(conv(x), F.conv2d(x, conv.weight, None, 2, 1, 1, 2), atol=1e-6)


def test_binary_convs_see_only_pm1_inputs_in_a_network() -> None:
    model = _randomise_bn_(build_backbone("mbf_bin", **TINY_FACE)).eval()
    seen: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0]))
               for _, m in binary_convs(model)]
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
        assert len(seen) == 33  # 16 blocks x 2 units + conv_sep
        assert all(set(t.unique().tolist()) == {-1.0, 1.0} for t in seen)
        seen.clear()
        set_binary_stage(model, 0)
        model(torch.randn(2, 3, 32, 32))
    for h in handles:
        h.remove()
    assert all(t.unique().numel() > 2 for t in seen)


def test_shortcut_pools_and_duplicates_channels() -> None:
    x = torch.arange(2 * 5 * 5, dtype=torch.float32).view(1, 2, 5, 5)
    out = Shortcut(2, 4, stride=2)(x)
    assert out.shape == (1, 4, 3, 3)  # ceil mode: as a stride-2, padding-1 conv on 5 px
    assert torch.equal(out[:, :2], out[:, 2:])
    assert out[0, 0, 0, 0] == (0 + 1 + 5 + 6) / 4 and out[0, 0, 2, 2] == 24
    with pytest.raises(InvalidModelOptionError, match="multiple of in_channels"):
        Shortcut(4, 6, stride=1)


# ----------------------------------------------------------------------------------------------
# two stages

@pytest.mark.parametrize("name, options", [("mbf_bin", TINY_FACE), ("resnet20_bin", {"num_classes": 5})])
def test_stages_share_state_dict_and_switch(name: str, options: dict, tmp_path) -> None:
    torch.manual_seed(0)
    stage1 = _randomise_bn_(build_backbone(name, stage=1, **options)).eval()
    assert stage1.binary_stage == binary_stage_of(stage1) == 1
    path = tmp_path / "stage1.pth"
    torch.save(stage1.state_dict(), path)
    stage2 = build_backbone(name, **options).eval()
    assert stage2.binary_stage == binary_stage_of(stage2) == 2
    assert list(stage2.state_dict()) == list(stage1.state_dict())
    stage2.load_state_dict(torch.load(path, weights_only=True), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out1, out2 = stage1(x), stage2(x)
        assert not torch.allclose(out1, out2)
        set_binary_stage(stage2, 1)
        assert stage2.binary_stage == 1
        assert torch.equal(stage2(x), out1)
        set_binary_stage(stage1, 2)
        assert torch.equal(stage1(x), out2)
    assert binary_stage_of(build_backbone("mbf", **TINY_FACE)) is None


def test_stage_two_gradients_reach_latent_weights_and_thresholds() -> None:
    model = build_backbone("resnet20_bin", num_classes=4).train()
    loss = F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


# ----------------------------------------------------------------------------------------------
# backbone contracts

def test_registry_lists_binary_models() -> None:
    assert "mbf_bin" in list_backbones("face") and backbone_kind("mbf_bin") == "face"
    assert set(CLASSIFIERS) <= set(list_backbones("classifier"))


def test_mbf_bin_face_contract() -> None:
    model = _randomise_bn_(build_backbone("mbf_bin", dropout=0.1, **TINY_FACE)).eval()
    assert (model.arch, model.input_size, model.embedding_size, model.feature_channels) == ("mbf_bin", 32, 16, 64)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        embedding = model(x)
        out = model(x, return_features=True)
    assert isinstance(out, FaceOutput) and torch.equal(out.embedding, embedding)
    assert embedding.shape == (2, 16) and out.feature_map.shape == (2, 64, 2, 2)
    assert torch.isfinite(embedding).all()
    with pytest.raises(InvalidModelOptionError, match=r"built for \[N, 3, 32, 32\].*\[2, 3, 48, 48\]"):
        model(torch.randn(2, 3, 48, 48))


@pytest.mark.parametrize("input_size, final", [(112, 7), (40, 3)])
def test_mbf_bin_head_follows_input_size(input_size: int, final: int) -> None:
    model = build_backbone("mbf_bin", input_size=input_size, width=0.0625, embedding_size=8).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, input_size, input_size), return_features=True)
    assert out.feature_map.shape[-2:] == (final, final) and out.embedding.shape == (1, 8)


@pytest.mark.parametrize("options, message", [
    ({"width": 0}, "width must be a positive number"),
    ({"input_size": 8}, "input_size must be an integer >= 16"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
])
def test_mbf_bin_bad_options(options: dict, message: str) -> None:
    with pytest.raises(InvalidModelOptionError, match=f"mbf_bin: {message}"):
        build_backbone("mbf_bin", **options)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_binary_classifier_contract(name: str) -> None:
    model = _randomise_bn_(build_backbone(name, num_classes=10)).eval()
    assert isinstance(model.classifier, nn.Linear) and model.classifier.out_features == 10
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
        out = model(x, return_features=True)
    assert isinstance(out, ClassifierOutput) and torch.equal(out.logits, logits)
    assert out.feature_map.shape == (2, model.feature_channels, 8, 8)
    assert torch.allclose(out.pooled, out.feature_map.mean(dim=(2, 3)), atol=1e-6)
    assert torch.allclose(model.classifier(out.pooled), logits, atol=1e-5)


@pytest.mark.parametrize("loss_spec", ["srd", "kd:0.9,feat:1.0"])
def test_classification_distillation_losses_train_a_binary_student(loss_spec: str) -> None:
    """SRD and the baselines run unchanged on a binary classifier; gradients reach its latent weights."""
    from types import SimpleNamespace

    from facekd.distill.critic import LinearCritic
    from facekd.distill.losses.registry import build_losses
    from facekd.distill.outputs import StudentOutput, TeacherOutput

    torch.manual_seed(0)
    teacher = build_backbone("resnet20", num_classes=5).eval()
    student = build_backbone("resnet20_bin", num_classes=5).train()
    losses = build_losses(loss_spec, "classifier", student_dim=student.feature_channels,
                          teacher_dim=teacher.feature_channels)
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        t = teacher(x, return_features=True)
    batch = SimpleNamespace(labels=torch.arange(6) % 5, labeled=torch.ones(6, dtype=torch.bool))
    terms = losses(StudentOutput.from_model(student(x, return_features=True)),
                   TeacherOutput(feature_map=t.feature_map, pooled=t.pooled, logits=t.logits,
                                 critic=LinearCritic(teacher.fc)), batch)
    assert terms and all(torch.isfinite(v) for v in terms.values())
    sum(terms.values()).backward()
    conv = student.layer2[0].conv
    assert isinstance(conv, BinaryConv2d) and conv.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------------
# size accounting

def test_packed_size_by_hand() -> None:
    model = nn.Sequential(BinaryConv2d(16, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1))
    sizes = model_size_bytes(model)
    binary, bn, real = 8 * 16 * 9, 4 * 8, 4 * 8 + 4  # BN: weight, bias, mean, var; 1x1 conv: weight + bias
    assert sizes["binary_parameters"] == binary
    assert sizes["float_bytes"] == 4 * (binary + bn + real)
    assert sizes["packed_bytes"] == binary // 8 + 4 * 8 + 4 * (bn + real)  # bits + one scale per channel
    set_binary_stage(model, 1)
    assert model_size_bytes(model)["packed_bytes"] == sizes["float_bytes"]


def test_summary_separates_binary_ops_real_macs_and_packed_size() -> None:
    s = summarize("resnet20_bin", num_classes=10)
    stem, fc = 16 * 3 * 9 * 32 * 32, 64 * 10
    binary = (6 * 16 * 16 * 9 * 32 * 32 + (32 * 16 + 5 * 32 * 32) * 9 * 16 * 16
              + (64 * 32 + 5 * 64 * 64) * 9 * 8 * 8)
    assert (s["binary_ops"], s["real_macs"]) == (binary, stem + fc)
    assert s["macs"] == binary + stem + fc and s["ops"] == stem + fc + binary // 64
    conv_outs = 6 * 16 + 6 * 32 + 6 * 64
    assert s["packed_bytes"] == s["float_bytes"] - 4 * s["binary_parameters"] + s["binary_parameters"] // 8 + 4 * conv_outs
    assert s["binary_stage"] == 2
    stage1 = summarize("resnet20_bin", num_classes=10, stage=1)
    assert (stage1["binary_ops"], stage1["real_macs"], stage1["packed_bytes"]) == (0, s["macs"], s["float_bytes"])
    real = summarize("resnet20", num_classes=10)
    assert real["binary_stage"] is None and real["binary_ops"] == 0 and real["packed_bytes"] == real["float_bytes"]


def test_mbf_bin_summary_and_cli(capsys: pytest.CaptureFixture[str]) -> None:
    s = summarize("mbf_bin")
    assert s["feature_map_shape"] == (512, 7, 7) and s["binary_ops"] > 100 * s["real_macs"]
    assert s["float_bytes"] / s["packed_bytes"] > 10
    assert s["macs"] == s["binary_ops"] + s["real_macs"]
    assert "packed size:" in format_summary(s)
    assert summary_main(["mbf_bin", "--input-size", "32", "--width", "0.25", "--stage", "1"]) == 0
    text = capsys.readouterr().out
    assert "binary stage:    1 (binary activations, real weights)" in text and "binary ops:      0.000 G" in text
    with pytest.raises(SystemExit):
        summary_main(["mbf", "--stage", "1"])
    assert "--stage applies to binary models; 'mbf' has no binary layers" in capsys.readouterr().err
    assert summary_main(["mbf"]) == 0
    assert "packed size" not in capsys.readouterr().out  # real models keep their summary as it was


# ----------------------------------------------------------------------------------------------
# export

def test_mbf_bin_exports_to_onnx(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    from facekd.models.onnx_backbone import export_onnx

    torch.manual_seed(0)
    model = _randomise_bn_(build_backbone("mbf_bin", **TINY_FACE)).eval()
    path = export_onnx(model, tmp_path / "mbf_bin.onnx")  # raises unless onnxruntime agrees with torch
    import onnx

    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "GreaterOrEqual" in ops and "Conv" in ops


# ----------------------------------------------------------------------------------------------
# two-stage distillation through the pipeline

def test_tiny_binary_student_distills_in_two_stages(tmp_path) -> None:
    from facekd.engine.metrics_log import read_metrics
    from facekd.models.weights import load_backbone
    from facekd.pipelines import distill as distill_pipeline

    torch.manual_seed(0)
    teacher = tmp_path / "teacher.pth"  # an untrained tiny teacher: its critic is fitted on the data
    torch.save(build_backbone("r18", width=0.125, embedding_size=32, input_size=32).state_dict(), teacher)
    common = ["--input-size", "32", "--batch-size", "12", "--workers", "0", "--no-tensorboard", "--log-every", "1",
              "--teacher", "r18", "--teacher-weights", str(teacher), "--teacher-width", "0.125",
              "--teacher-embedding-size", "32", "--teacher-scale", "16", "--student", "mbf_bin", "--width", "0.125",
              "--embedding-size", "16", "--scale", "16", "--set", "data=synthetic:ids=8,per_id=6,size=32",
              "--max-steps", "3", "--loss", "srd"]
    stage1, stage2 = tmp_path / "stage1", tmp_path / "stage2"
    init = build_backbone("mbf_bin", width=0.125, embedding_size=16, input_size=32, stage=1).state_dict()
    torch.save(init, tmp_path / "init.pth")  # stage 1 starts from known weights
    assert distill_pipeline.main([*common, "--student-option", "stage=1", "--weight-decay", "5e-6",
                                  "--init-student", str(tmp_path / "init.pth"),
                                  "--val-pairs", "0", "--out", str(stage1)]) == 0
    assert distill_pipeline.main([*common, "--student-option", "stage=2", "--weight-decay", "0",
                                  "--init-student", str(stage1 / "backbone.pth"),
                                  "--cache-dir", str(stage1 / "teacher_cache"),
                                  "--teacher-head", str(stage1 / "teacher_head.pth"),
                                  "--val-pairs", "100", "--out", str(stage2)]) == 0
    for run in (stage1, stage2):
        records = read_metrics(run)
        losses = [r[k] for r in records for k in r if k.startswith("loss/")]
        assert {"loss/arcface", "loss/srd/logits"} <= {k for r in records for k in r}
        assert losses and all(torch.isfinite(torch.tensor(v)) for v in losses)
    assert any(k.startswith("eval/synthetic/accuracy") for r in read_metrics(stage2) for k in r)
    student = load_backbone("mbf_bin", stage2 / "backbone.pth", width=0.125, embedding_size=16, input_size=32)
    assert student.binary_stage == 2 and student(torch.randn(2, 3, 32, 32)).shape == (2, 16)
    # stage 1 trained (its weights left the init) and stage 2 continued from them, not from the init
    w1, w2 = torch.load(stage1 / "backbone.pth"), torch.load(stage2 / "backbone.pth")
    keys = [k for k, v in init.items() if v.is_floating_point() and "running" not in k]

    def dist(a: dict, b: dict) -> float:
        return sum(float((a[k].float() - b[k].float()).pow(2).sum()) for k in keys) ** 0.5

    zero = {k: torch.zeros_like(init[k]) for k in keys}
    assert dist(w1, init) > 0.01 * dist(init, zero) and dist(w2, w1) < 0.5 * dist(w2, init)
