"""Loading users' weight files safely: backbones and classifiers from arcface_torch, facekd,
RepDistiller-style and plain state-dict files, plus facekd's own checkpoint format.

Every file is read with ``torch.load(weights_only=True)``: a file that holds code or other
objects is refused, never executed. Each recognised layout is a small class in an ordered
registry (``@register_format``); the first whose ``matches`` accepts the loaded dict extracts
the backbone state dict and/or the classifier (class centres [C, D]).
"""
from __future__ import annotations

import os
import pickle
import pickletools
import re
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import torch
from torch import Tensor, nn

from facekd.errors import FileProblemError
from facekd.log import get_logger
from facekd.registry import Registry

log = get_logger(__name__)

__all__ = [
    "FACEKD_FORMAT", "FACEKD_VERSION", "FACEKD_KEYS", "WeightsFileError", "StateDictMismatchError",
    "load_weights_file", "save_weights_file", "make_facekd_checkpoint", "register_format", "detect_format",
    "WeightsFormat", "list_formats", "strip_wrapper_prefixes", "backbone_state_dict", "rank_sibling_files",
    "merge_classifier_shards", "load_classifier", "load_state_dict_strict", "load_backbone",
]

FACEKD_FORMAT = "facekd"
"""Value of the ``format`` key that marks a facekd checkpoint."""
FACEKD_VERSION = 1
"""Version of the facekd checkpoint layout written by ``make_facekd_checkpoint``."""
FACEKD_KEYS = ("format", "version", "arch", "arch_options", "backbone", "head", "head_name", "config")
"""Keys every facekd checkpoint has; the engine may add more (optimizer, scheduler, step...)."""
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
"""Key prefixes added by DataParallel/DDP and torch.compile; stripped when every key has one."""
TORCH_FILE_GLOBALS = ("torch.", "collections.OrderedDict")
"""Globals an ordinary (legacy-format) torch file references; not a sign of code when it is corrupt."""
ONNX_SUFFIX = ".onnx"
MAX_LISTED_KEYS = 5


class WeightsFileError(FileProblemError):
    """A weights file that cannot be used; the message names the file and the problem."""


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


# ----------------------------------------------------------------------------------------------
# reading and writing torch files

def _weights_only_detail(message: str) -> str:
    """The specific reason inside torch's long weights_only failure message."""
    skip = ("Weights only load failed", "In PyTorch 2.6", "Check the documentation", "Please file an issue")
    parts = [p.strip() for p in message.split("\n\n") if p.strip()]
    specific = [p for p in parts if not p.startswith(skip)]
    return (specific[-1] if specific else parts[-1] if parts else message).replace("WeightsUnpickler error: ", "")


def _is_refused_object(detail: str) -> bool:
    """Whether torch refused a pickled global (a class or function), as opposed to unreadable bytes."""
    return "GLOBAL" in detail


def _pickled_globals(path: Path) -> list[str]:
    """Names of the globals (classes, functions) a raw pickle file would import, read by
    disassembling its opcodes with pickletools; nothing is executed. Empty when none or unparsable."""
    names: list[str] = []
    strings: list[str] = []
    try:
        with open(path, "rb") as f:
            for opcode, arg, _ in pickletools.genops(f):
                if opcode.name == "GLOBAL" or opcode.name == "INST":
                    names.append(str(arg).replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
    except (ValueError, EOFError, UnicodeDecodeError, OSError):
        pass
    return names


def _refused(path: Path, detail: str) -> WeightsFileError:
    return WeightsFileError(
        path, "holds objects other than tensors and plain containers (" + detail + "); facekd refuses to "
              "execute code from weight files. Re-save the weights as a plain state dict "
              "(torch.save(model.state_dict(), path)) in a trusted environment")


def _load_torch_object(path: str | os.PathLike[str]) -> Any:
    """``torch.load(weights_only=True)`` on CPU with every failure turned into a WeightsFileError."""
    p = Path(path)
    if not p.exists():
        raise WeightsFileError(p, "file not found")
    if not p.is_file():
        raise WeightsFileError(p, "is not a file")
    if p.suffix.lower() == ONNX_SUFFIX:
        raise WeightsFileError(p, "is an ONNX model, not a torch weights file; load it with load_backbone "
                                  "(or OnnxBackbone)")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # our own error follows
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        detail = _weights_only_detail(str(err))
        if _is_refused_object(detail):
            raise _refused(p, detail) from None
        # a raw pickle that torch's unpickler stopped reading before it reached its globals
        imported = [g for g in _pickled_globals(p) if not g.startswith(TORCH_FILE_GLOBALS)]
        if imported:
            raise _refused(p, "pickled globals " + ", ".join(sorted(set(imported))[:5])) from None
        raise WeightsFileError(p, f"is not a readable torch file (corrupt or not a checkpoint: {detail})") from None
    except (RuntimeError, EOFError, KeyError, ValueError, IndexError, TypeError, zipfile.BadZipFile,
            UnicodeDecodeError, AttributeError, OSError) as err:
        reason = str(err).split("\n")[0][:200] or type(err).__name__
        raise WeightsFileError(p, f"is not a readable torch file (corrupt, truncated or another format: "
                                  f"{type(err).__name__}: {reason})") from None


def load_weights_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a torch weights file safely (weights_only, CPU) and return its top-level dict."""
    obj = _load_torch_object(path)
    if not isinstance(obj, Mapping):
        raise WeightsFileError(path, f"holds a {type(obj).__name__}, expected a dict (a state dict or checkpoint)")
    return dict(obj)


def save_weights_file(obj: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """``torch.save`` atomically: write a temporary file beside ``path``, then rename it over."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        torch.save(dict(obj), tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


# ----------------------------------------------------------------------------------------------
# facekd checkpoint

def _state_dict_of(x: nn.Module | Mapping[str, Tensor]) -> dict[str, Tensor]:
    if isinstance(x, nn.Module):
        inner = x.module if isinstance(getattr(x, "module", None), nn.Module) else x  # DDP / DataParallel
        if getattr(inner, "distributed", False):
            raise ValueError("a sharded Partial FC head cannot be saved from one rank: pass "
                             "head.full_state_dict() (called on every rank) instead of the module")
        x = inner.state_dict()
    return {k: v.detach().cpu() if isinstance(v, Tensor) else v for k, v in strip_wrapper_prefixes(x).items()}


def make_facekd_checkpoint(arch: str, arch_options: Mapping[str, Any], backbone: nn.Module | Mapping[str, Tensor],
                           head: nn.Module | Mapping[str, Tensor] | None = None, head_name: str | None = None,
                           config: Mapping[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """A facekd checkpoint dict (see FACEKD_KEYS); ``extra`` adds entries such as optimizer state.

    ``head`` must hold the full classifier: for a sharded Partial FC pass ``head.full_state_dict()``.
    """
    clash = sorted(set(extra) & set(FACEKD_KEYS))
    if clash:
        raise ValueError(f"extra checkpoint entries may not replace core keys: {', '.join(clash)}")
    ckpt: dict[str, Any] = {
        "format": FACEKD_FORMAT,
        "version": FACEKD_VERSION,
        "arch": str(arch),
        "arch_options": dict(arch_options),
        "backbone": _state_dict_of(backbone),
        "head": None if head is None else _state_dict_of(head),
        "head_name": head_name,
        "config": dict(config or {}),
    }
    ckpt.update(extra)
    return ckpt


# ----------------------------------------------------------------------------------------------
# recognised layouts

def strip_wrapper_prefixes(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Remove DataParallel/DDP ``module.`` (and torch.compile ``_orig_mod.``) prefixes shared by all keys."""
    sd = dict(state_dict)
    changed = True
    while changed and sd:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(isinstance(k, str) and k.startswith(prefix) for k in sd):
                sd = {k[len(prefix):]: v for k, v in sd.items()}
                changed = True
    return sd


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())


def _shard_weight(obj: Any) -> Tensor | None:
    """The class-centre matrix of a classifier state dict (or a bare tensor), else None."""
    if isinstance(obj, Tensor):
        return obj if obj.dim() == 2 and obj.numel() else None
    if not isinstance(obj, Mapping):
        return None
    sd = strip_wrapper_prefixes(obj)
    for key in ("weight", "weight_activated", "kernel"):
        t = sd.get(key)
        if isinstance(t, Tensor) and t.dim() == 2 and t.numel():
            return t
    matrices = [v for v in sd.values() if isinstance(v, Tensor) and v.dim() == 2 and v.numel()]
    return matrices[0] if len(matrices) == 1 else None


class WeightsFormat:
    """A recognised file layout: how to tell it apart and where its backbone and classifier are."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    @staticmethod
    def matches(obj: Mapping[str, Any]) -> bool:
        """Whether a loaded dict has this layout."""
        raise NotImplementedError

    @staticmethod
    def backbone(obj: Mapping[str, Any], path: Path) -> Mapping[str, Tensor] | None:
        """The backbone state dict, or None when this layout carries none."""
        return None

    @staticmethod
    def classifier(obj: Mapping[str, Any], path: Path) -> Tensor | None:
        """The class centres [C, D], or None when this layout carries none."""
        return None


FORMATS: Registry[type[WeightsFormat]] = Registry("weights format")
"""Recognised layouts by name; detection tries them in registration order."""


def register_format(cls: type[WeightsFormat]) -> type[WeightsFormat]:
    """Class decorator adding a layout under ``cls.name``; detection tries layouts in registration order."""
    FORMATS.add(cls.name, cls, description=cls.description)
    return cls


def list_formats() -> list[str]:
    """Names of the recognised layouts, in detection order."""
    return [e.name for e in FORMATS.entries(ordered=True)]


def detect_format(obj: Mapping[str, Any], path: str | os.PathLike[str]) -> type[WeightsFormat]:
    """The first registered layout that matches ``obj``; a WeightsFileError naming the keys otherwise."""
    for fmt in (e.value for e in FORMATS.entries(ordered=True)):
        if fmt.matches(obj):
            return fmt
    keys = ", ".join(repr(k) for k in list(obj)[:8]) or "none"
    raise WeightsFileError(path, f"unrecognised layout (top-level keys: {keys}); expected a state dict, an "
                                 "arcface_torch checkpoint, a facekd checkpoint or a dict with the state dict "
                                 "under 'model' or 'state_dict'")


@register_format
class FacekdCheckpoint(WeightsFormat):
    """facekd's own checkpoint (make_facekd_checkpoint)."""

    name = "facekd"
    description = "facekd checkpoint"

    @staticmethod
    def matches(obj: Mapping[str, Any]) -> bool:
        return obj.get("format") == FACEKD_FORMAT

    @staticmethod
    def validate(obj: Mapping[str, Any], path: Path) -> None:
        """Raise unless ``obj`` is a complete facekd checkpoint this version can read."""
        version = obj.get("version")
        if not isinstance(version, int) or version > FACEKD_VERSION:
            raise WeightsFileError(path, f"facekd checkpoint version {version!r} is not supported by this facekd "
                                         f"(reads up to {FACEKD_VERSION}); upgrade facekd")
        missing = [k for k in FACEKD_KEYS if k not in obj]
        if missing:
            raise WeightsFileError(path, f"facekd checkpoint lacks key(s) {', '.join(missing)}")
        if not _is_state_dict(obj["backbone"]):
            raise WeightsFileError(path, "facekd checkpoint's 'backbone' is not a state dict of tensors")

    @staticmethod
    def backbone(obj: Mapping[str, Any], path: Path) -> Mapping[str, Tensor] | None:
        FacekdCheckpoint.validate(obj, path)
        return obj["backbone"]

    @staticmethod
    def classifier(obj: Mapping[str, Any], path: Path) -> Tensor | None:
        FacekdCheckpoint.validate(obj, path)
        return None if obj["head"] is None else _shard_weight(obj["head"])


@register_format
class ArcfaceTorchCheckpoint(WeightsFormat):
    """arcface_torch training checkpoint ``checkpoint_gpu_{rank}.pt`` (backbone + this rank's centres)."""

    name = "arcface_torch_checkpoint"
    description = "arcface_torch training checkpoint"

    @staticmethod
    def matches(obj: Mapping[str, Any]) -> bool:
        return "state_dict_backbone" in obj

    @staticmethod
    def backbone(obj: Mapping[str, Any], path: Path) -> Mapping[str, Tensor] | None:
        return obj["state_dict_backbone"]

    @staticmethod
    def classifier(obj: Mapping[str, Any], path: Path) -> Tensor | None:
        if obj.get("state_dict_softmax_fc") is None:
            return None
        return _merged_or_single_shard(obj["state_dict_softmax_fc"], path)


@register_format
class NestedStateDict(WeightsFormat):
    """A dict with the model's state dict under 'model' (RepDistiller), 'state_dict' or 'model_state_dict'."""

    name = "nested_state_dict"
    description = "training checkpoint with the state dict under 'model'/'state_dict'"
    KEYS: ClassVar[tuple[str, ...]] = ("model", "state_dict", "model_state_dict")

    @staticmethod
    def matches(obj: Mapping[str, Any]) -> bool:
        return any(_is_state_dict(obj.get(k)) for k in NestedStateDict.KEYS)

    @staticmethod
    def backbone(obj: Mapping[str, Any], path: Path) -> Mapping[str, Tensor] | None:
        return next(obj[k] for k in NestedStateDict.KEYS if _is_state_dict(obj.get(k)))


@register_format
class ClassifierFile(WeightsFormat):
    """A classifier alone: a head state dict whose only matrix is ``weight`` [C, D] (e.g. softmax_fc_gpu_0.pt)."""

    name = "classifier"
    description = "classifier (class centres) file"
    CLASSIFIER_KEYS: ClassVar[frozenset[str]] = frozenset(
        {"weight", "bias", "weight_mom", "weight_activated", "weight_activated_mom", "weight_index",
         "teacher_sha256"})

    @staticmethod
    def matches(obj: Mapping[str, Any]) -> bool:
        sd = strip_wrapper_prefixes(obj)
        return _is_state_dict(sd) and set(sd) <= ClassifierFile.CLASSIFIER_KEYS and _shard_weight(sd) is not None

    @staticmethod
    def classifier(obj: Mapping[str, Any], path: Path) -> Tensor | None:
        return _merged_or_single_shard(obj, path)


@register_format
class PlainStateDict(WeightsFormat):
    """A plain backbone state dict (arcface_torch's released ``backbone.pth``)."""

    name = "state_dict"
    description = "plain backbone state dict"

    @staticmethod
    def matches(obj: Mapping[str, Any]) -> bool:
        return _is_state_dict(obj)

    @staticmethod
    def backbone(obj: Mapping[str, Any], path: Path) -> Mapping[str, Tensor] | None:
        return obj


def backbone_state_dict(obj: Mapping[str, Any], path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The backbone state dict of a loaded file of any recognised layout, wrapper prefixes stripped."""
    fmt = detect_format(obj, path)
    sd = fmt.backbone(obj, Path(path))
    if sd is None:
        raise WeightsFileError(path, f"holds no backbone weights (it is a {fmt.description})")
    if not _is_state_dict(sd):
        raise WeightsFileError(path, f"the backbone entry of this {fmt.description} is not a state dict of tensors")
    return strip_wrapper_prefixes(sd)


# ----------------------------------------------------------------------------------------------
# classifier shards (arcface_torch Partial FC)

RANK_FILE_PATTERNS = (
    re.compile(r"^(?P<head>.*_gpu_)(?P<rank>\d+)(?P<tail>\.\w+)$"),
    re.compile(r"^(?P<head>rank_)(?P<rank>\d+)(?P<tail>_softmax_weight\.pt)$"),
)
"""Per-rank file names: checkpoint_gpu_{r}.pt, softmax_fc_gpu_{r}.pt, rank_{r}_softmax_weight.pt."""


def _rank_name(name: str) -> re.Match[str] | None:
    return next((m for m in (p.match(name) for p in RANK_FILE_PATTERNS) if m), None)


def rank_sibling_files(path: str | os.PathLike[str]) -> list[Path] | None:
    """All rank files of the run ``path`` belongs to, in rank order; None for a name without a rank.

    Raises WeightsFileError when ranks are missing (e.g. rank 1 of 0..3).
    """
    p = Path(path)
    m = _rank_name(p.name)
    if m is None:
        return None
    found: dict[int, Path] = {}
    for sibling in p.parent.iterdir():
        sm = _rank_name(sibling.name)
        if sm and sm.group("head") == m.group("head") and sm.group("tail") == m.group("tail") and sibling.is_file():
            found[int(sm.group("rank"))] = sibling
    expected = range(max(found) + 1)
    missing = [r for r in expected if r not in found]
    if missing:
        raise WeightsFileError(p, f"classifier shards of rank(s) {missing} are missing beside it "
                                  f"(found ranks {sorted(found)}); all ranks' files are needed to rebuild the classifier")
    return [found[r] for r in expected]


def merge_classifier_shards(paths: list[str | os.PathLike[str]]) -> Tensor:
    """Concatenate per-rank class-centre shards (given in rank order) into one [C, D] classifier.

    Accepts arcface_torch checkpoints (``state_dict_softmax_fc``), ``softmax_fc_gpu_{r}.pt`` head state
    dicts and bare tensors; checks that the shard sizes are those of one run split over len(paths) ranks.
    """
    if not paths:
        raise ValueError("merge_classifier_shards needs at least one file")
    shards: list[Tensor] = []
    for path in paths:
        obj = _load_torch_object(path)
        if isinstance(obj, Mapping) and "state_dict_softmax_fc" in obj:
            obj = obj["state_dict_softmax_fc"]
        weight = _shard_weight(obj)
        if weight is None:
            raise WeightsFileError(path, "holds no classifier shard (expected a 2-D 'weight' tensor)")
        shards.append(weight.float())
    dims = {s.shape[1] for s in shards}
    if len(dims) > 1:
        raise WeightsFileError(paths[0], f"classifier shards disagree on the embedding size: "
                                         f"{[list(s.shape) for s in shards]}")
    sizes = [s.shape[0] for s in shards]
    total, world = sum(sizes), len(sizes)
    expected = [total // world + int(r < total % world) for r in range(world)]
    if sizes != expected:
        raise WeightsFileError(paths[0], f"classifier shard sizes {sizes} are not one run's split of {total} classes "
                                         f"over {world} ranks (expected {expected}); are files of different runs mixed?")
    return torch.cat(shards)


def _merged_or_single_shard(shard_obj: Any, path: Path) -> Tensor | None:
    siblings = rank_sibling_files(path)
    if siblings is not None and len(siblings) > 1:
        return merge_classifier_shards(list(siblings))
    weight = _shard_weight(shard_obj)
    if weight is not None and siblings is None:
        log.info("%s: no rank number in the file name; using its classifier as the whole classifier", path)
    return weight


def load_classifier(path: str | os.PathLike[str]) -> Tensor | None:
    """Class centres [C, D] from a file: arcface_torch checkpoints/shards (all ranks merged), facekd
    checkpoints or a head file with one 2-D ``weight``; None when the file holds no classifier."""
    p = Path(path)
    obj = _load_torch_object(p)
    if isinstance(obj, Tensor):
        weight = _merged_or_single_shard(obj, p)
        if weight is None:
            raise WeightsFileError(p, f"holds a tensor of shape {list(obj.shape)}, not a [C, D] classifier")
        return weight.float()
    if not isinstance(obj, Mapping):
        raise WeightsFileError(p, f"holds a {type(obj).__name__}, expected a dict or tensor")
    weight = detect_format(obj, p).classifier(obj, p)
    return None if weight is None else weight.float()


# ----------------------------------------------------------------------------------------------
# loading into a model

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
