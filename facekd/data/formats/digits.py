"""``digits[:size=32,test=0.25,seed=0]``: scikit-learn's 8x8 digits upscaled to RGB, a seeded
stratified hold-out as ``test``."""
from __future__ import annotations

from facekd.data.sources import ImageSource, OpenRequest, register_source


@register_source("digits", kinds=("classify",), example="digits[:size=32,test=0.25,seed=0]")
def open_digits(argument: str, request: OpenRequest) -> ImageSource:
    """``DigitsImages`` for the requested split (the training images as a pool)."""
    from facekd.data.classification import DataSpecError, parse_options
    from facekd.data.digits import DigitsImages

    options = parse_options(f"digits:{argument}", argument, {"size": int, "test": float, "seed": int})
    try:
        return DigitsImages(size=options.get("size", 32), split="train" if request.unlabeled else request.split,
                            test_fraction=options.get("test", 0.25), seed=options.get("seed", 0))
    except ValueError as err:
        raise DataSpecError(f"'digits:{argument}': {err}") from None
