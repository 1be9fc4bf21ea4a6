"""``tinyimagenet:ROOT``: Tiny-ImageNet-200 (train, and its labeled val set as ``test``)."""
from __future__ import annotations

from facekd.data.sources import ImageSource, OpenRequest, register_source


@register_source("tinyimagenet", kinds=("classify",), example="tinyimagenet:ROOT")
def open_tinyimagenet(argument: str, request: OpenRequest) -> ImageSource:
    """``TinyImageNetImages`` for the requested split (the training images as a pool)."""
    from facekd.data.classification import need_root
    from facekd.data.tiny_imagenet import TinyImageNetImages

    return TinyImageNetImages(need_root("tinyimagenet", argument), "train" if request.unlabeled else request.split)
