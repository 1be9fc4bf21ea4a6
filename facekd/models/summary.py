"""Model summaries: parameters, MACs and feature-map shape of any registered model.

``python -m facekd.models.summary r100`` prints them; ``summarize(name, **options)`` returns them
as a dict for reports. MACs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on
the ``meta`` device (shapes only, no arithmetic), so even r200 is summarised in about a second.
"""
from __future__ import annotations

import argparse
import contextlib
import json
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from facekd.models.registry import backbone_kind, build_backbone, list_backbones
from facekd.models.scaling import InvalidModelOptionError

MACS_NOTE = "multiply-accumulates; insightface's 'GFLOPs' figures are MACs"

# Which kind of model each command-line option applies to (None: every kind).
OPTION_KINDS: dict[str, str | None] = {
    "input_size": None,
    "width": "face",
    "embedding_size": "face",
    "num_classes": "classifier",
}


def count_parameters(model: nn.Module) -> int:
    """Number of parameter elements, frozen ones (e.g. iresnet's fixed BN scale) included."""
    return sum(p.numel() for p in model.parameters())


def _model_device(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _run_once(model: nn.Module, input_size: int, *, return_features: bool = False,
              counter: FlopCounterMode | None = None) -> Any:
    """One eval-mode, no-grad forward of a [1, 3, s, s] zero image; restores the train/eval mode."""
    x = torch.zeros(1, 3, input_size, input_size, device=_model_device(model))
    kwargs = {"return_features": True} if return_features else {}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), (counter if counter is not None else contextlib.nullcontext()):
            return model(x, **kwargs)
    finally:
        model.train(was_training)


def count_macs(model: nn.Module, input_size: int) -> int:
    """Multiply-accumulates of one forward of ``model(x)``, x of shape [1, 3, input_size, input_size].

    FLOPs / 2 as counted by FlopCounterMode (convolutions and matrix products); normalisation and
    activations are not counted, as in insightface's figures. Works on ``meta``-device models.
    """
    counter = FlopCounterMode(display=False)
    _run_once(model, input_size, counter=counter)
    return int(counter.get_total_flops()) // 2


def summarize(name: str, **options: Any) -> dict[str, Any]:
    """Build ``name`` on the meta device with ``options`` and return its summary as a dict.

    Keys: name, kind, options, parameters, macs, input_size, feature_map_shape (C, H, W),
    feature_channels, and embedding_size (face models) or num_classes (classifiers).
    """
    kind = backbone_kind(name)
    options = {key: value for key, value in options.items() if value is not None}
    with torch.device("meta"):
        model = build_backbone(name, **options)
    input_size = int(getattr(model, "input_size"))
    output = _run_once(model, input_size, return_features=True)
    summary: dict[str, Any] = {
        "name": name,
        "kind": kind,
        "options": options,
        "parameters": count_parameters(model),
        "macs": count_macs(model, input_size),
        "input_size": input_size,
        "feature_map_shape": tuple(int(d) for d in output.feature_map.shape[1:]),
        "feature_channels": int(getattr(model, "feature_channels")),
    }
    if kind == "face":
        summary["embedding_size"] = int(getattr(model, "embedding_size"))
    else:
        summary["num_classes"] = int(getattr(model, "num_classes"))
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """Human-readable lines for a ``summarize`` result."""
    size = summary["input_size"]
    channels, height, width = summary["feature_map_shape"]
    if "embedding_size" in summary:
        output_line = f"embedding size:  {summary['embedding_size']}"
    else:
        output_line = f"classes:         {summary['num_classes']}"
    options = ", ".join(f"{k}={v}" for k, v in summary["options"].items()) or "defaults"
    return "\n".join([
        f"model:           {summary['name']} ({summary['kind']}; {options})",
        f"parameters:      {summary['parameters'] / 1e6:.2f} M ({summary['parameters']:,})",
        f"MACs:            {summary['macs'] / 1e9:.3f} G at 1x3x{size}x{size} ({MACS_NOTE})",
        output_line,
        f"feature map:     {channels} x {height} x {width} (C x H x W, last map before the head)",
    ])


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m facekd.models.summary",
        description="Print a registered model's parameters, MACs (multiply-accumulates, the unit of "
                    "insightface's 'GFLOPs' figures), output size and feature-map shape.",
    )
    parser.add_argument("name", choices=list_backbones(), metavar="NAME",
                        help="model name: " + ", ".join(list_backbones()))
    parser.add_argument("--input-size", type=int, default=None,
                        help="square input size in pixels (default: the model's own, 112 for face "
                             "models, 32 for CIFAR models, 224 for torchvision models)")
    parser.add_argument("--width", type=float, default=None,
                        help="channel multiplier, face models only (default: 1.0)")
    parser.add_argument("--embedding-size", type=int, default=None,
                        help="embedding dimension, face models only (default: 512)")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="number of classes, classification models only (default: 100)")
    parser.add_argument("--json", action="store_true",
                        help="print the summary as one JSON object instead of text (default: off)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    kind = backbone_kind(args.name)
    options = {key: getattr(args, key) for key in OPTION_KINDS if getattr(args, key) is not None}
    for key in options:
        if OPTION_KINDS[key] not in (None, kind):
            parser.error(f"--{key.replace('_', '-')} applies to {OPTION_KINDS[key]} models; "
                         f"'{args.name}' is a {kind} model")
    try:
        summary = summarize(args.name, **options)
    except InvalidModelOptionError as err:
        parser.error(str(err))
    print(json.dumps(summary) if args.json else format_summary(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
