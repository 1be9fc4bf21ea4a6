"""Binary students: ``mbf_bin`` (faces) and ``resnet20_bin`` / ``resnet8x4_bin`` (classification).

Both are built from one unit, ReActNet's binary conv unit with Bi-Real's real shortcut:
``RPReLU(BN(BinaryConv(RSign(x))) + shortcut(x))``. Shortcuts are parameter-free (average
pooling when the unit strides, channel duplication when it widens), so every binary convolution
has a real-valued path around it and the only real convolutions are the first conv and the
embedding/classification head (XNOR-Net's and Bi-Real's practice).

- ``mbf_bin``: MobileFaceNet's stage plan (blocks 1/4/6/2, stride-2 blocks between stages,
  channels 128 -> 256, a 1x1 ``conv_sep`` to 512 whose output is the distillation feature map,
  the real GDC embedding head), with ReActNet's MobileNet block (binary 3x3 conv, then binary
  1x1 conv) in place of the depthwise bottleneck: binary depthwise convs carry too little
  information, full binary 3x3 convs cost only bit operations.
- ``resnet20_bin`` / ``resnet8x4_bin``: the CIFAR ResNets with every 3x3 conv binary and wrapped
  by its own shortcut (Bi-Real Net), real stem and linear classifier.

Options shared by all: ``stage`` (0 all real, 1 binary activations with real weights, 2 both
binary; default 2, see ``facekd.models.binary_layers.set_binary_stage``) and ``estimator``
(the sign's surrogate gradient: "clip" or "approx").
"""
from __future__ import annotations

from typing import Any, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from facekd.models.binary_layers import (
    DEFAULT_ESTIMATOR,
    BinaryConv2d,
    RPReLU,
    RSign,
    check_estimator,
    check_stage,
    set_binary_stage,
)
from facekd.models.interface import check_classifier_options, check_face_options
from facekd.models.mobilefacenet import GDC, MIN_INPUT_SIZE, NUM_DOWNSAMPLINGS, ConvBlock
from facekd.models.outputs import ClassifierOutput, FaceOutput
from facekd.models.registry import register_backbone
from facekd.models.scaling import (
    InvalidModelOptionError,
    body_autocast,
    check_image_batch,
    conv_output_size,
    scale_channels,
)

__all__ = ["Shortcut", "BinaryConvUnit", "ReActBlock", "BinaryMobileFaceNet", "BinaryCifarResNet"]


class Shortcut(nn.Module):
    """Parameter-free real shortcut: 2x2 average pooling when striding, channel duplication when widening."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels % in_channels != 0 or stride not in (1, 2):
            raise InvalidModelOptionError(
                f"a binary unit's shortcut needs out_channels to be a multiple of in_channels and stride 1 or 2, "
                f"got {in_channels} -> {out_channels}, stride {stride}")
        self.repeats = out_channels // in_channels
        # ceil_mode keeps the pooled size equal to the stride-2 conv's output on odd sizes
        self.pool = nn.AvgPool2d(2, 2, ceil_mode=True) if stride == 2 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(x)
        return x.repeat(1, self.repeats, 1, 1) if self.repeats > 1 else x


class BinaryConvUnit(nn.Module):
    """RSign -> BinaryConv2d (k x k, stride) -> BN, plus the real shortcut, then RPReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1,
                 estimator: str = DEFAULT_ESTIMATOR) -> None:
        super().__init__()
        self.sign = RSign(in_channels, estimator)
        self.conv = BinaryConv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2)
        self.bn = nn.BatchNorm2d(out_channels)
        self.shortcut = Shortcut(in_channels, out_channels, stride)
        self.act = RPReLU(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(self.sign(x))) + self.shortcut(x))


class ReActBlock(nn.Module):
    """ReActNet's MobileNet block: a binary 3x3 unit (may stride) then a binary 1x1 unit (may widen)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1,
                 estimator: str = DEFAULT_ESTIMATOR) -> None:
        super().__init__()
        self.spatial = BinaryConvUnit(in_channels, in_channels, 3, stride, estimator)
        self.pointwise = BinaryConvUnit(in_channels, out_channels, 1, 1, estimator)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.spatial(x))


def _init_weights(model: nn.Module) -> None:
    """Kaiming (fan_out) convs and linears, unit BatchNorm, as the full-precision models."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class BinaryMobileFaceNet(nn.Module):
    """Binary MobileFaceNet: real stem -> 16 ReActBlocks -> binary ``conv_sep`` -> real GDC head.

    ``model(x)`` returns the (not normalised) embedding; ``model(x, return_features=True)``
    returns ``FaceOutput(embedding, feature_map)`` with the output of ``conv_sep``.
    """

    def __init__(self, arch: str, stage_blocks: Sequence[int], *, embedding_size: int = 512,
                 input_size: int = 112, width: float = 1.0, dropout: float = 0.0, fp16: bool = False,
                 stage: int = 2, estimator: str = DEFAULT_ESTIMATOR) -> None:
        super().__init__()
        if len(stage_blocks) != 4:
            raise InvalidModelOptionError(f"{arch}: need 4 stage depths, got {stage_blocks}")
        self.arch = arch
        opts = check_face_options(arch, embedding_size=embedding_size, input_size=input_size, width=width,
                                  dropout=dropout, min_input_size=MIN_INPUT_SIZE)
        self.embedding_size, self.input_size, self.width = opts.embedding_size, opts.input_size, opts.width
        self.fp16 = bool(fp16)
        dropout = opts.dropout
        estimator = check_estimator(estimator)
        self.binary_stage = check_stage(stage)

        narrow = scale_channels(128, self.width)
        wide, head = 2 * narrow, 4 * narrow

        def run(channels: int, count: int) -> list[nn.Module]:
            return [ReActBlock(channels, channels, 1, estimator) for _ in range(count)]

        self.stem = ConvBlock(3, narrow, kernel=3, stride=2, padding=1)
        self.layers = nn.Sequential(
            *run(narrow, stage_blocks[0]),
            ReActBlock(narrow, narrow, 2, estimator), *run(narrow, stage_blocks[1]),
            ReActBlock(narrow, wide, 2, estimator), *run(wide, stage_blocks[2]),
            ReActBlock(wide, wide, 2, estimator), *run(wide, stage_blocks[3]),
        )
        self.conv_sep = BinaryConvUnit(wide, head, 1, 1, estimator)
        size = self.input_size
        for _ in range(NUM_DOWNSAMPLINGS):
            size = conv_output_size(size, kernel=3, stride=2, padding=1)
        self.feature_channels = head
        self.feature_size = size
        self.features = GDC(head, self.embedding_size, kernel=size, dropout=dropout)
        _init_weights(self)
        set_binary_stage(self, self.binary_stage)

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | FaceOutput:
        """Embedding [N, D], or ``FaceOutput`` with the conv_sep map when ``return_features``."""
        check_image_batch(self.arch, x, self.input_size)
        with body_autocast(self.fp16, x):
            x = self.layers(self.stem(x))
        if self.fp16:
            x = x.float()
        feature_map = self.conv_sep(x)
        embedding = self.features(feature_map)
        if return_features:
            return FaceOutput(embedding, feature_map)
        return embedding


class BinaryCifarResNet(nn.Module):
    """Bi-Real CIFAR ResNet of depth 6n+2: real stem conv+BN, 3 stages of binary 3x3 units, real fc.

    Each basic block is two ``BinaryConvUnit``s, each with its own shortcut. ``model(x)`` returns
    logits; ``model(x, return_features=True)`` returns ``ClassifierOutput(logits, feature_map,
    pooled)`` with the last unit's output as the feature map.
    """

    def __init__(self, arch: str, depth: int, filters: Sequence[int], *, num_classes: int = 100,
                 input_size: int = 32, stage: int = 2, estimator: str = DEFAULT_ESTIMATOR) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or len(filters) != 4:
            raise InvalidModelOptionError(f"{arch}: depth must be 6n+2 with 4 filter sizes, got "
                                          f"depth={depth}, filters={list(filters)}")
        self.arch = arch
        opts = check_classifier_options(arch, num_classes=num_classes, input_size=input_size)
        self.num_classes, self.input_size = opts.num_classes, opts.input_size
        estimator = check_estimator(estimator)
        self.binary_stage = check_stage(stage)
        blocks_per_stage = (depth - 2) // 6

        self.conv1 = nn.Conv2d(3, filters[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(filters[0])
        in_channels = filters[0]
        stages = []
        for channels, stride in zip(filters[1:], (1, 2, 2)):
            units = [BinaryConvUnit(in_channels, channels, 3, stride, estimator),
                     BinaryConvUnit(channels, channels, 3, 1, estimator)]
            for _ in range(1, blocks_per_stage):
                units += [BinaryConvUnit(channels, channels, 3, 1, estimator) for _ in range(2)]
            stages.append(nn.Sequential(*units))
            in_channels = channels
        self.layer1, self.layer2, self.layer3 = stages
        self.feature_channels = in_channels
        self.fc = nn.Linear(in_channels, self.num_classes)
        _init_weights(self)
        set_binary_stage(self, self.binary_stage)

    @property
    def classifier(self) -> nn.Linear:
        """The final linear layer (the SRD semantic critic)."""
        return self.fc

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | ClassifierOutput:
        """Logits [N, K], or ``ClassifierOutput`` with layer3's output when asked."""
        x = self.bn1(self.conv1(x))
        feature_map = self.layer3(self.layer2(self.layer1(x)))
        pooled = F.adaptive_avg_pool2d(feature_map, 1).flatten(1)
        logits = self.fc(pooled)
        if return_features:
            return ClassifierOutput(logits, feature_map, pooled)
        return logits


@register_backbone("mbf_bin", kind="face")
def mobilefacenet_binary(**options: Any) -> BinaryMobileFaceNet:
    """Binary MobileFaceNet (blocks 1/4/6/2); options: embedding_size, input_size, width, dropout, fp16,
    stage (0/1/2, default 2), estimator ("clip" or "approx")."""
    return BinaryMobileFaceNet("mbf_bin", (1, 4, 6, 2), **options)


@register_backbone("resnet20_bin", kind="classifier")
def resnet20_binary(**options: Any) -> BinaryCifarResNet:
    """Binary ResNet-20 (filters 16/16/32/64); options: num_classes, input_size, stage, estimator."""
    return BinaryCifarResNet("resnet20_bin", 20, (16, 16, 32, 64), **options)


@register_backbone("resnet8x4_bin", kind="classifier")
def resnet8x4_binary(**options: Any) -> BinaryCifarResNet:
    """Binary ResNet-8x4 (filters 32/64/128/256), student for resnet32x4; options as resnet20_bin."""
    return BinaryCifarResNet("resnet8x4_bin", 8, (32, 64, 128, 256), **options)
