"""Cheap checks the training commands run before anything expensive (a teacher forward, a cache
build, a long data scan), and the command-specific wording of library errors.

Every check raises ``ConfigError`` with one line that names the flag and the fix; ``run_command``
prints it as ``error: ...`` and exits 2. Library errors stay structured (e.g.
``StateDictMismatchError.misshaped``); ``weights_hint`` turns one into a hint that names the flags
of the command that raised it (distill's ``--teacher-width``, verify's ``--model-option``...).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, TypeVar

from facekd.config import ConfigError
from facekd.log import get_logger

log = get_logger(__name__)

__all__ = ["DATA_EXAMPLES", "MODEL_FLAGS", "require_data", "check_files", "open_data", "check_labeled_size",
           "check_pool_size", "check_input_size", "is_onnx", "warn_ignored_for_onnx", "WeightFlags", "infer_width",
           "infer_embedding_size", "infer_num_classes", "infer_input_size", "weights_hint", "reword_mismatch",
           "open_model"]

T = TypeVar("T")

DEFAULT_EMBEDDING_SIZE = 512
"""The face builders' embedding size when none is given."""

DATA_EXAMPLES = ("--data synthetic:ids=300,per_id=20,size=32 (generated faces, a quick try), "
                 "--data data/mine (an image folder, one subfolder per identity) or "
                 "--data /data/ms1m (a RecordIO folder or train.rec)")
"""How --data is given, shown when it is missing or unreadable."""


def require_data(data: str | None, command: str) -> str:
    """``data`` itself, or a ConfigError saying that ``command`` needs ``--data`` (with examples)."""
    if data is None or not str(data).strip():
        raise ConfigError(f"{command} needs --data (no training data is assumed): e.g. {DATA_EXAMPLES}")
    return str(data)


def _is_source_spec(spec: str) -> bool:
    """A ``prefix:argument`` data spec (``synthetic:...``, ``rec:PATH``...): its source checks it, not a path test."""
    from facekd.data.sources import split_spec

    return bool(split_spec(spec)[0])


def check_files(flags: Iterable[tuple[str, str | os.PathLike[str] | None]]) -> None:
    """Each ``(flag, path)`` with a path set must exist: else one line naming the flag and the path.
    Data specs (``--data``, ``--unlabeled``) with a source prefix (``synthetic[:...]``, ``rec:PATH``...) are
    checked by their source when opened."""
    for flag, value in flags:
        if value is None or value == "":
            continue
        text = str(value)
        if flag in ("--data", "--unlabeled") and _is_source_spec(text):
            continue
        if not Path(text).expanduser().exists():
            what = {"--data": f"; give {DATA_EXAMPLES}",
                    "--unlabeled": "; give an image folder, a .rec or synthetic:ids=...,per_id=...,size=...",
                    "--resume": "; give a run's output directory or one of its checkpoints"}.get(flag, "")
            raise ConfigError(f"{flag} {text}: no such file or directory{what}")


def open_data(flag: str, spec: str, opener: Callable[[str], T]) -> T:
    """``opener(spec)``, with a spec it cannot read reworded as one line naming ``flag``."""
    from facekd.data.errors import DataFileNotFoundError

    try:
        return opener(spec)
    except DataFileNotFoundError as err:
        raise ConfigError(f"{flag} {spec}: no such file or directory; e.g. {DATA_EXAMPLES}") from err
    except ValueError as err:  # a malformed spec (unknown synthetic key, unreadable folder...)
        text = str(err)
        for prefix in (f"{spec!r}: ", f"{spec}: ", f"{Path(spec)}: "):
            text = text[len(prefix):] if text.startswith(prefix) else text
        raise ConfigError(f"{flag} {spec}: {text}") from err


def check_labeled_size(size: int, batch_size: int, world_size: int = 1, flag: str = "--data") -> None:
    """A labeled set must fill one step's ``batch_size`` rows on every rank (batches drop the rest)."""
    per_rank = size // max(1, world_size)
    if per_rank < batch_size:
        ranks = f" ({per_rank} per process of {world_size})" if world_size > 1 else ""
        raise ConfigError(f"{flag} has {size} images{ranks}, fewer than one step's --batch-size {batch_size}; use a "
                          "smaller --batch-size or more data")


def check_pool_size(pool_size: int, batch_size: int, ratio: float, world_size: int = 1) -> None:
    """An unlabeled pool must fill one step's unlabeled rows (``round(ratio * batch)``) on every rank."""
    rows = max(1, int(round(ratio * batch_size)))
    per_rank = pool_size // max(1, world_size)
    if per_rank >= rows:
        return
    ranks = f" per process ({world_size} processes)" if world_size > 1 else ""
    fits = per_rank / batch_size
    smaller = (f" a smaller --unlabeled-ratio (at most {math.floor(fits * 100) / 100:g})," if per_rank >= 1
               and math.floor(fits * 100) > 0 else "")
    raise ConfigError(f"--unlabeled pool of {pool_size} images{ranks} cannot fill the {rows} unlabeled rows of "
                      f"one step (--unlabeled-ratio {ratio:g} x --batch-size {batch_size}); use{smaller} a smaller "
                      f"--batch-size or a larger pool")


def is_onnx(path: str | os.PathLike[str] | None) -> bool:
    """Whether ``path`` names an ONNX model file."""
    return path is not None and Path(path).suffix.lower() == ".onnx"


def warn_ignored_for_onnx(path: str | os.PathLike[str] | None, flags: Mapping[str, Any]) -> list[str]:
    """Log one warning listing the ``flags`` (name -> value, None = not given) an ONNX ``path`` makes
    meaningless; returns the flags warned about."""
    if not is_onnx(path):
        return []
    given = [f"{flag} {value}" for flag, value in flags.items() if value is not None]
    if given:
        log.warning("%s is an ONNX model (architecture, width and embedding size are in the file): %s ignored",
                    Path(str(path)).name, ", ".join(given))
    return [g.split(" ", 1)[0] for g in given]


# ----------------------------------------------------------------------------------------------
# weights that do not fit: the hint in the command's own flags

@dataclass(frozen=True)
class WeightFlags:
    """How the command that loads a weights file spells its options (None: it has no such flag).

    ``width`` etc. are flag names, e.g. ``--teacher-width``; ``option_style``: the command takes
    builder options as ``--model-option width=...``; ``shared_input``: ``input_size`` is also the
    other model's (distill: teacher and student see the same images)."""

    what: str
    arch: str | None = None
    width: str | None = None
    embedding_size: str | None = None
    input_size: str | None = None
    shared_input: bool = False
    option_style: bool = False
    num_classes: str | None = None

    def set(self, flag: str | None, value: Any) -> str:
        """``--teacher-width 0.125`` or ``--model-option width=0.125``."""
        if flag is None:
            return ""
        return f"{flag}={value}" if self.option_style else f"{flag} {value}"


def _first_conv(err: Any) -> tuple[int, int] | None:
    """(file, model) output channels of the first misshaped conv weight (4-d), in the model's order."""
    for file_shape, model_shape in err.misshaped.values():
        if len(file_shape) == 4 and len(model_shape) == 4 and file_shape[0] != model_shape[0] and model_shape[0]:
            return file_shape[0], model_shape[0]
    return None


def infer_width(err: Any) -> float | None:
    """The width multiplier the file was trained with, from the first conv whose channel count
    differs (8 found where 64 expected at width 1 -> 0.125); None when no conv differs."""
    conv = _first_conv(err)
    if conv is None:
        return None
    width = float(err.options.get("width", 1.0) or 1.0) * conv[0] / conv[1]
    return float(f"{width:.4g}")


def infer_embedding_size(err: Any) -> int | None:
    """The file's embedding size when the model's last 1-d tensor (the embedding BatchNorm) differs."""
    size = err.options.get("embedding_size", DEFAULT_EMBEDDING_SIZE)
    ones = [shapes for shapes in err.misshaped.values() if len(shapes[1]) == 1]
    if size is None or not ones:
        return None
    file_shape, model_shape = ones[-1]
    return int(file_shape[0]) if model_shape == (size,) and file_shape != model_shape else None


def infer_num_classes(err: Any) -> int | None:
    """The classes of a classifier's file, when a 2-d tensor of ``num_classes`` rows has another row count."""
    classes = err.options.get("num_classes")
    for file_shape, model_shape in err.misshaped.values():
        if classes and len(model_shape) == 2 and model_shape[0] == classes and file_shape[1:] == model_shape[1:]:
            return int(file_shape[0])
    return None


def infer_input_size(err: Any) -> int | None:
    """The input side the file was trained at, when only layers sized by the final feature map
    differ (a depthwise kernel k x k, or a flatten-fc with k*k times the channels): 16 * k for
    face backbones (four stride-2 stages); None otherwise."""
    if _first_conv(err) is not None:
        return None  # a width problem: the feature map size cannot be read off
    size = err.options.get("input_size")
    for file_shape, model_shape in err.misshaped.values():
        if len(file_shape) == 4 and file_shape[:2] == model_shape[:2] and file_shape[2] == file_shape[3]:
            return 16 * int(file_shape[2])
        if len(file_shape) == 2 and file_shape[0] == model_shape[0] and size and model_shape[1]:
            ratio = file_shape[1] / model_shape[1]
            model_map = -(-int(size) // 16)
            side = model_map * math.sqrt(ratio)
            if abs(side - round(side)) < 1e-6:
                return 16 * int(round(side))
    return None


def weights_hint(err: Any, flags: WeightFlags) -> str:
    """One line: what to set, in ``flags``' spelling, inferred from ``err``'s shapes where possible."""
    fixes: list[str] = []
    conv = _first_conv(err)
    width = infer_width(err)
    if width is not None and conv is not None and flags.width:
        fixes.append(f"{flags.set(flags.width, width)} (the file's first conv has {conv[0]} channels where "
                     f"width {err.options.get('width', 1.0)} builds {conv[1]})")
    emb = infer_embedding_size(err)
    if emb is not None and flags.embedding_size:
        fixes.append(f"{flags.set(flags.embedding_size, emb)} (the file's embeddings are {emb}-d)")
    classes = infer_num_classes(err)
    if classes is not None and flags.num_classes:
        fixes.append(f"{flags.set(flags.num_classes, classes)} (the file's classifier has {classes} classes)")
    size = infer_input_size(err) if classes is None else None
    if size is not None and flags.input_size:
        shared = "; teacher and student share this one input size" if flags.shared_input else ""
        fixes.append(f"{flags.set(flags.input_size, size)} (the file was trained at about {size}px{shared})")
    if not fixes:
        named = [f for f in (flags.arch, flags.width, flags.embedding_size, flags.input_size) if f]
        fixes.append("check " + (", ".join(named) if named else "how the file was trained")
                     + ("; teacher and student share one input size" if flags.shared_input else ""))
    return f"{flags.what}: try " + "; ".join(fixes)


def reword_mismatch(err: Exception, flags: WeightFlags) -> Exception:
    """A StateDictMismatchError whose generic last line is replaced by ``weights_hint`` (same class,
    same structured fields); other exceptions come back unchanged."""
    from facekd.models.weights import StateDictMismatchError

    if not isinstance(err, StateDictMismatchError):
        return err
    lines = str(err).split("\n")
    if lines and lines[-1].lstrip().startswith("Check that the architecture"):
        lines = lines[:-1]
    lines.append("  " + weights_hint(err, flags))
    return StateDictMismatchError("\n".join(lines), arch=err.arch, options=err.options, source=err.source,
                                  missing=err.missing, unexpected=err.unexpected, misshaped=err.misshaped)


def check_input_size(found: int | None, expected: int, what: str, flag: str = "--input-size",
                     rule: str = "teacher and student see the same images (one input size)") -> None:
    """``found`` (a model's fixed input side, None = any) must be ``expected``: one line naming
    ``flag`` otherwise."""
    if found is None or int(found) == int(expected):
        return
    raise ConfigError(f"{what} takes {found}px images but {flag} is {expected}: {rule}; pass {flag} {found}")


MODEL_FLAGS = WeightFlags("model (--model)", arch="--arch", width="--model-option width",
                          embedding_size="--model-option embedding_size", input_size="--model-option input_size",
                          option_style=True)
"""How the evaluation commands (verify, identify) spell a model file's builder options."""


def open_model(build: Callable[..., T], model: str | os.PathLike[str], arch: str | None, *args: Any,
               flags: WeightFlags = MODEL_FLAGS, **options: Any) -> T:
    """``build(model, arch, *args, **options)`` for a command with ``--model``/``--arch``/``--model-option``:
    ``--arch`` given with an ONNX file is warned about (the file names its own), and weights that do
    not fit are hinted in ``flags``' spelling (``--model-option width=0.125``)."""
    from facekd.models.weights import StateDictMismatchError

    warn_ignored_for_onnx(model, {"--arch": arch})
    try:
        return build(model, arch, *args, **options)
    except StateDictMismatchError as err:
        raise reword_mismatch(err, flags) from None
