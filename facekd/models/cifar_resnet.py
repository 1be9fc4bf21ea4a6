"""CIFAR ResNets (resnet8x4, resnet32x4, resnet20, resnet56) with RepDistiller's state-dict keys.

The architecture and key names follow the CIFAR-100 distillation benchmark of RepDistiller/SRD,
so their checkpoints load with ``strict=True``. The feature map handed to distillation losses
is the output of ``layer3`` after its final ReLU (not RepDistiller's pre-activation variant).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from facekd.models.interface import check_classifier_options
from facekd.models.outputs import ClassifierOutput
from facekd.models.registry import register_backbone
from facekd.models.scaling import InvalidModelOptionError

CIFAR_INPUT_SIZE = 32


class CifarBasicBlock(nn.Module):
    """conv3x3(stride) -> BN -> ReLU -> conv3x3 -> BN, plus shortcut, then ReLU."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride, bias=False),
                nn.BatchNorm2d(channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class CifarResNet(nn.Module):
    """3-stage CIFAR ResNet of depth 6n+2 with filters (stem, stage1, stage2, stage3).

    ``model(x)`` returns logits; ``model(x, return_features=True)`` returns
    ``ClassifierOutput(logits, feature_map, pooled)``. ``classifier`` is the final ``fc`` layer.
    """

    def __init__(self, arch: str, depth: int, filters: Sequence[int], *, num_classes: int = 100,
                 input_size: int = CIFAR_INPUT_SIZE) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or len(filters) != 4:
            raise InvalidModelOptionError(f"{arch}: depth must be 6n+2 with 4 filter sizes, got "
                                          f"depth={depth}, filters={list(filters)}")
        self.arch = arch
        opts = check_classifier_options(arch, num_classes=num_classes, input_size=input_size)
        self.num_classes, self.input_size = opts.num_classes, opts.input_size
        blocks_per_stage = (depth - 2) // 6

        self.conv1 = nn.Conv2d(3, filters[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(filters[0])
        in_channels = filters[0]
        stages = []
        for channels, stride in zip(filters[1:], (1, 2, 2)):
            blocks = [CifarBasicBlock(in_channels, channels, stride)]
            blocks += [CifarBasicBlock(channels, channels) for _ in range(1, blocks_per_stage)]
            stages.append(nn.Sequential(*blocks))
            in_channels = channels
        self.layer1, self.layer2, self.layer3 = stages
        self.feature_channels = in_channels
        self.fc = nn.Linear(in_channels, self.num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @property
    def classifier(self) -> nn.Linear:
        """The final linear layer (the SRD semantic critic)."""
        return self.fc

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | ClassifierOutput:
        """Logits [N, K], or ``ClassifierOutput`` with the post-ReLU layer3 map when asked."""
        x = F.relu(self.bn1(self.conv1(x)))
        feature_map = self.layer3(self.layer2(self.layer1(x)))
        pooled = F.adaptive_avg_pool2d(feature_map, 1).flatten(1)
        logits = self.fc(pooled)
        if return_features:
            return ClassifierOutput(logits, feature_map, pooled)
        return logits


@register_backbone("resnet8x4", kind="classifier")
def resnet8x4(**options: Any) -> CifarResNet:
    """ResNet-8x4 (filters 32/64/128/256), the usual CIFAR-100 student; options: num_classes, input_size."""
    return CifarResNet("resnet8x4", 8, (32, 64, 128, 256), **options)


@register_backbone("resnet32x4", kind="classifier")
def resnet32x4(**options: Any) -> CifarResNet:
    """ResNet-32x4 (filters 32/64/128/256), the usual CIFAR-100 teacher; options: num_classes, input_size."""
    return CifarResNet("resnet32x4", 32, (32, 64, 128, 256), **options)


@register_backbone("resnet20", kind="classifier")
def resnet20(**options: Any) -> CifarResNet:
    """ResNet-20 (filters 16/16/32/64); options: num_classes, input_size."""
    return CifarResNet("resnet20", 20, (16, 16, 32, 64), **options)


@register_backbone("resnet56", kind="classifier")
def resnet56(**options: Any) -> CifarResNet:
    """ResNet-56 (filters 16/16/32/64); options: num_classes, input_size."""
    return CifarResNet("resnet56", 56, (16, 16, 32, 64), **options)
