"""Wide ResNets for CIFAR (wrn_40_2, wrn_40_1, wrn_16_2) with RepDistiller's state-dict keys.

Pre-activation blocks as in RepDistiller/SRD's ``wrn.py`` (checkpoints load with
``strict=True``). The feature map for distillation is ReLU(BN(block3 output)), the map that is
pooled; pooling is global (any input size), not a fixed 8x8 window.
"""
from __future__ import annotations

import math
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from facekd.models.interface import check_classifier_options
from facekd.models.outputs import ClassifierOutput
from facekd.models.registry import register_backbone
from facekd.models.scaling import InvalidModelOptionError

CIFAR_INPUT_SIZE = 32


class WideBasicBlock(nn.Module):
    """Pre-activation block: BN -> ReLU -> conv3x3(stride) -> BN -> ReLU -> [dropout] -> conv3x3.

    When the width changes, the shortcut is a 1x1 conv applied to the pre-activated input.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.dropout = dropout
        self.equal_in_out = in_channels == out_channels
        # attribute name kept as in RepDistiller so that the key is "convShortcut.weight"
        self.convShortcut = None if self.equal_in_out else nn.Conv2d(
            in_channels, out_channels, 1, stride, 0, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        activated = F.relu(self.bn1(x))
        out = F.relu(self.bn2(self.conv1(activated)))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        out = self.conv2(out)
        shortcut = x if self.convShortcut is None else self.convShortcut(activated)
        return shortcut + out


class NetworkBlock(nn.Module):
    """One stage of ``num_blocks`` WideBasicBlocks (held in ``layer`` for RepDistiller's keys)."""

    def __init__(self, num_blocks: int, in_channels: int, out_channels: int, stride: int,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.layer = nn.Sequential(*(
            WideBasicBlock(in_channels if i == 0 else out_channels, out_channels,
                           stride if i == 0 else 1, dropout)
            for i in range(num_blocks)
        ))

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-k for CIFAR: conv stem, three stages, BN -> ReLU, global pool, ``fc``.

    ``model(x)`` returns logits; ``model(x, return_features=True)`` returns
    ``ClassifierOutput(logits, feature_map, pooled)``. ``classifier`` is the final ``fc`` layer.
    """

    def __init__(self, arch: str, depth: int, widen_factor: int, *, num_classes: int = 100,
                 input_size: int = CIFAR_INPUT_SIZE, dropout: float = 0.0) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise InvalidModelOptionError(f"{arch}: depth must be 6n+4, got {depth}")
        self.arch = arch
        opts = check_classifier_options(arch, num_classes=num_classes, input_size=input_size, dropout=dropout)
        self.num_classes, self.input_size = opts.num_classes, opts.input_size
        dropout = opts.dropout
        blocks_per_stage = (depth - 4) // 6
        channels = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)

        self.conv1 = nn.Conv2d(3, channels[0], 3, 1, 1, bias=False)
        self.block1 = NetworkBlock(blocks_per_stage, channels[0], channels[1], 1, dropout)
        self.block2 = NetworkBlock(blocks_per_stage, channels[1], channels[2], 2, dropout)
        self.block3 = NetworkBlock(blocks_per_stage, channels[2], channels[3], 2, dropout)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.feature_channels = channels[3]
        self.fc = nn.Linear(channels[3], self.num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    @property
    def classifier(self) -> nn.Linear:
        """The final linear layer (the SRD semantic critic)."""
        return self.fc

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | ClassifierOutput:
        """Logits [N, K], or ``ClassifierOutput`` with the post-BN-ReLU final map when asked."""
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        feature_map = F.relu(self.bn1(out))
        pooled = F.adaptive_avg_pool2d(feature_map, 1).flatten(1)
        logits = self.fc(pooled)
        if return_features:
            return ClassifierOutput(logits, feature_map, pooled)
        return logits


@register_backbone("wrn_40_2", kind="classifier")
def wrn_40_2(**options: Any) -> WideResNet:
    """WRN-40-2, the usual CIFAR-100 teacher; options: num_classes, input_size, dropout."""
    return WideResNet("wrn_40_2", 40, 2, **options)


@register_backbone("wrn_40_1", kind="classifier")
def wrn_40_1(**options: Any) -> WideResNet:
    """WRN-40-1 student; options: num_classes, input_size, dropout."""
    return WideResNet("wrn_40_1", 40, 1, **options)


@register_backbone("wrn_16_2", kind="classifier")
def wrn_16_2(**options: Any) -> WideResNet:
    """WRN-16-2 student; options: num_classes, input_size, dropout."""
    return WideResNet("wrn_16_2", 16, 2, **options)
