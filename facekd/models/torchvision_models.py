"""torchvision's resnet18 and mobilenet_v2 as facekd classifiers, reused rather than rewritten.

``TorchvisionClassifier`` adopts the top-level submodules of a model built by
``torchvision.models`` under their own names, so its ``state_dict`` keys are exactly
torchvision's (``conv1.weight``, ``fc.weight``, ``features.0.0.weight``, ``classifier.1.weight``...)
and torchvision checkpoints load with ``strict=True``. Only the forward is re-sequenced so that
the feature map and pooled feature can be returned too.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from facekd.models.interface import check_classifier_options
from facekd.models.outputs import ClassifierOutput
from facekd.models.registry import register_backbone

IMAGENET_INPUT_SIZE = 224


class TorchvisionClassifier(nn.Module):
    """A torchvision classifier split into trunk (named submodules run in order) and head.

    ``model(x)`` returns logits as torchvision's forward does; ``model(x, return_features=True)``
    returns ``ClassifierOutput(logits, feature_map, pooled)`` where ``feature_map`` is the trunk
    output (after its activation) and ``pooled`` its global average. ``classifier`` is the
    head's final ``nn.Linear`` (for mobilenet_v2 it sits inside torchvision's ``classifier``
    Sequential, whose state-dict key ``classifier.1.*`` is unchanged).
    """

    def __init__(self, arch: str, model: nn.Module, trunk: Sequence[str], head: str,
                 num_classes: int, input_size: int) -> None:
        super().__init__()
        self.arch = arch
        self.num_classes = num_classes
        self.input_size = input_size
        self._trunk_names = tuple(trunk)
        self._head_name = head
        for name, child in model.named_children():
            setattr(self, name, child)  # same names -> same state-dict keys as torchvision
        self.feature_channels = self.classifier.in_features

    def _child(self, name: str) -> nn.Module:
        # looked up in _modules: for mobilenet_v2 the attribute "classifier" is the property below
        return self._modules[name]

    @property
    def classifier(self) -> nn.Linear:  # type: ignore[override]
        """The head's final linear layer (the SRD semantic critic)."""
        linears = [m for m in self._child(self._head_name).modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError(f"{self.arch}: head '{self._head_name}' holds no nn.Linear")
        return linears[-1]

    def get_submodule(self, target: str) -> nn.Module:
        """As ``nn.Module.get_submodule``, resolving the first name among the registered children.

        Needed because the ``classifier`` property shadows mobilenet_v2's ``classifier`` child:
        ``get_submodule("classifier.1")`` (and ``get_parameter``) follow the state-dict path.
        """
        first, _, rest = target.partition(".")
        child = self._modules.get(first)
        if child is None:
            return super().get_submodule(target)
        return child.get_submodule(rest) if rest else child

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | ClassifierOutput:
        """Logits [N, K], or ``ClassifierOutput`` with the trunk's final map when asked."""
        feature_map = x
        for name in self._trunk_names:
            feature_map = self._child(name)(feature_map)
        pooled = F.adaptive_avg_pool2d(feature_map, 1).flatten(1)
        logits = self._child(self._head_name)(pooled)
        if return_features:
            return ClassifierOutput(logits, feature_map, pooled)
        return logits


def _wrap(arch: str, factory: Callable[..., nn.Module], trunk: Sequence[str], head: str,
          num_classes: int, input_size: int) -> TorchvisionClassifier:
    opts = check_classifier_options(arch, num_classes=num_classes, input_size=input_size)
    num_classes, input_size = opts.num_classes, opts.input_size
    model = factory(weights=None, num_classes=num_classes)
    return TorchvisionClassifier(arch, model, trunk, head, num_classes, input_size)


@register_backbone("resnet18", kind="classifier")
def resnet18(*, num_classes: int = 100, input_size: int = IMAGENET_INPUT_SIZE) -> TorchvisionClassifier:
    """torchvision ResNet-18 (random init); options: num_classes, input_size (nominal, for summaries)."""
    trunk = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
    import torchvision  # imported on use: ``import facekd.models`` stays light

    return _wrap("resnet18", torchvision.models.resnet18, trunk, "fc", num_classes, input_size)


@register_backbone("mobilenet_v2", kind="classifier")
def mobilenet_v2(*, num_classes: int = 100, input_size: int = IMAGENET_INPUT_SIZE) -> TorchvisionClassifier:
    """torchvision MobileNetV2 (random init); options: num_classes, input_size (nominal, for summaries)."""
    import torchvision  # imported on use: ``import facekd.models`` stays light

    return _wrap("mobilenet_v2", torchvision.models.mobilenet_v2, ("features",), "classifier",
                 num_classes, input_size)
