"""Loading weights into models: strict state-dict loading that says what differs
(``StateDictMismatchError``), ``load_backbone`` (torch files of any layout, or ONNX) and
``load_classifier``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from torch import Tensor, nn

from facekd.log import get_logger
from facekd.models.weights.checkpoint import strip_wrapper_prefixes
from facekd.models.weights.files import ONNX_SUFFIX, WeightsFileError, load_torch_object, load_weights_file
from facekd.models.weights.formats import FacekdCheckpoint, backbone_state_dict, detect_format
from facekd.models.weights.shards import merged_or_single_shard

log = get_logger(__name__)

__all__ = [
    "MAX_LISTED_KEYS", "StateDictMismatchError", "load_classifier", "load_state_dict_strict", "load_backbone",
]


MAX_LISTED_KEYS = 5


class StateDictMismatchError(ValueError):
    """A state dict whose keys or shapes do not fit the architecture it was loaded into.

    Besides the message it carries what differs, for callers that word their own hint (the flags
    of their command): ``arch``, ``options``, ``source``, ``missing`` / ``unexpected`` keys and
    ``misshaped`` (key -> (shape in the file, shape in the model)), keys in the model's order."""

    def __init__(self, message: str, *, arch: str | None = None, options: Mapping[str, Any] | None = None,
                 source: str | os.PathLike[str] | None = None, missing: Sequence[str] = (),
                 unexpected: Sequence[str] = (),
                 misshaped: Mapping[str, tuple[tuple[int, ...], tuple[int, ...]]] | None = None) -> None:
        super().__init__(message)
        self.arch = arch
        self.options = dict(options or {})
        self.source = source
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.misshaped = dict(misshaped or {})

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_mismatch, (str(self), self.arch, self.options, self.source, self.missing, self.unexpected,
                                    self.misshaped))


def _rebuild_mismatch(message: str, arch: str | None, options: Mapping[str, Any], source: Any,
                      missing: Sequence[str], unexpected: Sequence[str],
                      misshaped: Mapping[str, tuple[tuple[int, ...], tuple[int, ...]]]) -> StateDictMismatchError:
    """Unpickle a StateDictMismatchError (it crosses process boundaries in DDP error reports)."""
    return StateDictMismatchError(message, arch=arch, options=options, source=source, missing=missing,
                                  unexpected=unexpected, misshaped=misshaped)


def load_classifier(path: str | os.PathLike[str]) -> Tensor | None:
    """Class centres [C, D] from a file: arcface_torch checkpoints/shards (all ranks merged), facekd
    checkpoints or a head file with one 2-D ``weight``; None when the file holds no classifier."""
    p = Path(path)
    obj = load_torch_object(p)
    if isinstance(obj, Tensor):
        weight = merged_or_single_shard(obj, p)
        if weight is None:
            raise WeightsFileError(p, f"holds a tensor of shape {list(obj.shape)}, not a [C, D] classifier")
        return weight.float()
    if not isinstance(obj, Mapping):
        raise WeightsFileError(p, f"holds a {type(obj).__name__}, expected a dict or tensor")
    weight = detect_format(obj, p).classifier(obj, p)
    return None if weight is None else weight.float()


def _describe(arch: str, options: Mapping[str, Any] | None) -> str:
    opts = ", ".join(f"{k}={v!r}" for k, v in (options or {}).items())
    return f"'{arch}'" + (f" (options: {opts})" if opts else " (default options)")


def _listed(items: list[str]) -> str:
    more = f", ... ({len(items) - MAX_LISTED_KEYS} more)" if len(items) > MAX_LISTED_KEYS else ""
    return ", ".join(items[:MAX_LISTED_KEYS]) + more


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, Tensor], arch: str,
                           options: Mapping[str, Any] | None = None, source: str | os.PathLike[str] | None = None) -> None:
    """Load ``state_dict`` strictly; on any mismatch raise StateDictMismatchError saying what differs.

    BatchNorm ``num_batches_tracked`` counters absent from older files are taken from the model.
    """
    own = model.state_dict()
    sd = strip_wrapper_prefixes(state_dict)
    for key, value in own.items():
        if key.endswith("num_batches_tracked") and key not in sd:
            sd[key] = value
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    misshaped = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or misshaped:
        lines = [f"state dict{f' from {source}' if source else ''} does not fit architecture {_describe(arch, options)}:"]
        if missing:
            lines.append(f"  {len(missing)} missing key(s): "
                         + _listed([f"{k} {list(own[k].shape)}" for k in missing]))
        if unexpected:
            lines.append(f"  {len(unexpected)} unexpected key(s): "
                         + _listed([f"{k} {list(sd[k].shape)}" for k in unexpected]))
        if misshaped:
            lines.append(f"  {len(misshaped)} key(s) with another shape: "
                         + _listed([f"{k}: file {list(sd[k].shape)} vs model {list(own[k].shape)}" for k in misshaped]))
        lines.append("  Check that the architecture and its options match how the file was trained "
                     "(a wrong --arch, --width, --input-size or --embedding-size).")
        raise StateDictMismatchError(
            "\n".join(lines), arch=arch, options=options, source=source, missing=missing, unexpected=unexpected,
            misshaped={k: (tuple(sd[k].shape), tuple(own[k].shape)) for k in misshaped})
    model.load_state_dict(sd, strict=True)


def load_backbone(arch: str | None, path: str | os.PathLike[str], *, arch_flag: str = "--arch",
                  **options: Any) -> Any:
    """A backbone in eval mode from a weights file: torch files are built with ``build_backbone(arch,
    **options)`` and loaded strictly (facekd checkpoints supply arch and options); ``.onnx`` files
    give an OnnxBackbone (option ``providers``). ``arch_flag``: how the calling command names
    ``arch`` in its errors (``--teacher`` in distill)."""
    p = Path(path)
    if p.suffix.lower() == ONNX_SUFFIX:
        from facekd.models.onnx_backbone import OnnxBackbone

        providers = options.pop("providers", None)
        if options:
            log.warning("%s: options %s do not apply to an ONNX model and are ignored", p, sorted(options))
        return OnnxBackbone(p, providers=providers)
    from facekd.models.registry import build_backbone

    obj = load_weights_file(p)
    fmt = detect_format(obj, p)
    if fmt is FacekdCheckpoint:
        FacekdCheckpoint.validate(obj, p)
        if arch is not None and arch != obj["arch"]:
            raise WeightsFileError(p, f"is a facekd checkpoint of architecture '{obj['arch']}', not '{arch}'; "
                                      f"drop {arch_flag} or pass the right one")
        arch = obj["arch"]
        options = {**obj.get("arch_options", {}), **options}
    if arch is None:
        raise WeightsFileError(p, f"is a {fmt.description} that does not name its architecture; "
                                  f"say which one it is (e.g. {arch_flag} r100, r50, mbf)")
    sd = backbone_state_dict(obj, p)
    model = build_backbone(arch, **options)
    load_state_dict_strict(model, sd, arch, options, source=p)
    return model.eval()
