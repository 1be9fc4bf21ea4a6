"""``cifar100:ROOT``, ``cifar10:ROOT``: a local copy in torchvision's layout (``facekd.data.cifar``;
never downloaded). As an unlabeled pool: the training images."""
from __future__ import annotations

from facekd.data.sources import ImageSource, OpenRequest, register_source


def _open(name: str, argument: str, request: OpenRequest) -> ImageSource:
    """``CifarImages`` of ``name`` for the requested split."""
    from facekd.data.cifar import CifarImages
    from facekd.data.classification import need_root

    return CifarImages(need_root(name, argument), name, "train" if request.unlabeled else request.split)


@register_source("cifar100", kinds=("classify",), example="cifar100:ROOT")
def open_cifar100(argument: str, request: OpenRequest) -> ImageSource:
    """CIFAR-100 (100 classes)."""
    return _open("cifar100", argument, request)


@register_source("cifar10", kinds=("classify",), example="cifar10:ROOT")
def open_cifar10(argument: str, request: OpenRequest) -> ImageSource:
    """CIFAR-10 (10 classes)."""
    return _open("cifar10", argument, request)
