"""Model summaries: parameters, MACs and feature-map shape of any registered model.

``python -m facekd.models.summary r100`` prints them; ``summarize(name, **options)`` returns them
as a dict for reports. MACs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on
the ``meta`` device (shapes only, no arithmetic), so even r200 is summarised in about a second.

Binary models (``mbf_bin``, ``resnet20_bin``...) are accounted honestly: the multiply-accumulates
of convolutions with binary weights and binary inputs are reported as binary operations
(XNOR + popcount), separately from the real MACs, and the packed size stores 1 bit per binary
weight (plus its per-channel scale) and 32 bits for everything else.
"""
from __future__ import annotations

import argparse
import contextlib
import json
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from facekd.models.binary_layers import BinaryConv2d, BinaryStageError, binary_convs, binary_stage_of
from facekd.models.registry import backbone_kind, build_backbone, list_backbones
from facekd.models.scaling import InvalidModelOptionError

MACS_NOTE = "multiply-accumulates; insightface's 'GFLOPs' figures are MACs"
BOPS_PER_OP = 64
"""Bi-Real Net's / ReActNet's convention: OPs = real MACs + binary ops / 64 (64-bit XNOR words)."""

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


def count_binary_ops(model: nn.Module, input_size: int) -> int:
    """Binary operations (XNOR-popcount multiply-accumulates) of one forward on [1, 3, s, s].

    These are the MACs of the ``BinaryConv2d`` layers whose weights are binary (stage 2; their
    inputs are binarised by the RSign before them). ``count_macs`` counts them too, as MACs:
    real MACs = count_macs - count_binary_ops.
    """
    total = 0

    def hook(module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        nonlocal total
        conv: BinaryConv2d = module  # type: ignore[assignment]
        taps = conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1]
        total += output.numel() * taps

    handles = [m.register_forward_hook(hook) for _, m in binary_convs(model) if m.binary_weights]
    try:
        _run_once(model, input_size)
    finally:
        for handle in handles:
            handle.remove()
    return total


def model_size_bytes(model: nn.Module) -> dict[str, int]:
    """Storage of a model for inference: ``float_bytes`` with every tensor as stored (float32),
    ``packed_bytes`` with each binary weight packed to 1 bit (rounded up to whole bytes per layer)
    plus one float32 scale per output channel, and ``binary_parameters``, how many weights are 1-bit.

    Both count parameters and floating-point buffers (BN running statistics); integer
    bookkeeping buffers (``num_batches_tracked``) are not needed for inference and are left out.
    """
    binary = {id(m.weight): m for _, m in binary_convs(model) if m.binary_weights}
    float_bytes = packed_bytes = binary_parameters = 0
    tensors = [t for t in model.parameters()] + [b for b in model.buffers() if b.is_floating_point()]
    for tensor in tensors:
        stored = tensor.numel() * tensor.element_size()
        float_bytes += stored
        conv = binary.get(id(tensor))
        if conv is None:
            packed_bytes += stored
        else:
            binary_parameters += tensor.numel()
            packed_bytes += -(-tensor.numel() // 8) + conv.out_channels * 4  # bits + XNOR-Net scales
    return {"float_bytes": float_bytes, "packed_bytes": packed_bytes, "binary_parameters": binary_parameters}


def summarize(name: str, **options: Any) -> dict[str, Any]:
    """Build ``name`` on the meta device with ``options`` and return its summary as a dict.

    Keys: name, kind, options, parameters, macs, input_size, feature_map_shape (C, H, W),
    feature_channels, and embedding_size (face models) or num_classes (classifiers); the size
    accounting binary_ops, real_macs (macs - binary_ops), ops (real_macs + binary_ops / 64),
    binary_parameters, float_bytes, packed_bytes; binary_stage (None for real-valued models).
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
    binary_ops = count_binary_ops(model, input_size)
    summary.update({
        "binary_stage": binary_stage_of(model),
        "binary_ops": binary_ops,
        "real_macs": summary["macs"] - binary_ops,
        "ops": summary["macs"] - binary_ops + binary_ops // BOPS_PER_OP,
        **model_size_bytes(model),
    })
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
    lines = [
        f"model:           {summary['name']} ({summary['kind']}; {options})",
        f"parameters:      {summary['parameters'] / 1e6:.2f} M ({summary['parameters']:,})",
        f"MACs:            {summary['macs'] / 1e9:.3f} G at 1x3x{size}x{size} ({MACS_NOTE})",
        output_line,
        f"feature map:     {channels} x {height} x {width} (C x H x W, last map before the head)",
    ]
    if summary.get("binary_stage") is not None:
        lines += _binary_lines(summary)
    return "\n".join(lines)


def _binary_lines(summary: dict[str, Any]) -> list[str]:
    """The binary accounting of a binary model (stage, binary ops, real MACs, packed size)."""
    stage_words = {0: "all real", 1: "binary activations, real weights", 2: "binary weights and activations"}
    ratio = summary["float_bytes"] / max(1, summary["packed_bytes"])
    return [
        f"binary stage:    {summary['binary_stage']} ({stage_words[summary['binary_stage']]})",
        f"binary ops:      {summary['binary_ops'] / 1e9:.3f} G (XNOR-popcount MACs of binary convolutions)",
        f"real MACs:       {summary['real_macs'] / 1e9:.3f} G (first conv, head and every real layer)",
        f"OPs:             {summary['ops'] / 1e9:.3f} G (real MACs + binary ops / {BOPS_PER_OP}, as Bi-Real Net counts)",
        f"packed size:     {summary['packed_bytes'] / 2**20:.2f} MiB ({summary['binary_parameters']:,} weights "
        f"at 1 bit) vs {summary['float_bytes'] / 2**20:.2f} MiB float32 ({ratio:.1f}x smaller)",
    ]


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
    parser.add_argument("--stage", type=int, default=None, choices=(0, 1, 2),
                        help="binary models only: 0 all real, 1 binary activations with real weights, "
                             "2 binary weights and activations (default: 2)")
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
    if args.stage is not None:
        with torch.device("meta"):
            if not binary_convs(build_backbone(args.name)):
                parser.error(f"--stage applies to binary models; '{args.name}' has no binary layers")
        options["stage"] = args.stage
    try:
        summary = summarize(args.name, **options)
    except (InvalidModelOptionError, BinaryStageError) as err:
        parser.error(str(err))
    print(json.dumps(summary) if args.json else format_summary(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
