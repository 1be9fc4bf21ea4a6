"""The registry of distillation losses and the combined loss set a pipeline trains with.

A loss is an ``nn.Module`` registered by name and student kind (``"face"`` or ``"classifier"``)::

    @register_loss("srd", kinds=("face",))
    class SRDFace(DistillLoss): ...

and built with ``build_loss("srd", kind="face", student_dim=128, teacher_dim=512, mode="mse")``.
``forward(student_out, teacher_out, batch)`` returns named, already weighted scalar terms
(``{"srd/logits": ..., "srd/feat": ...}``); the engine sums and logs them. Losses that own
trainable parts (connectors) hold them as submodules, so a ``LossSet`` goes into the optimizer
and the checkpoints like any module. ``build_losses("srd:1.0,kd:0.5", ...)`` combines several,
each term multiplied by its loss's weight.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from facekd.distill.outputs import StudentOutput, TeacherOutput
from facekd.registry import Registry, did_you_mean

__all__ = [
    "KINDS", "LOSSES", "LossError", "UnknownLossError", "InvalidLossOptionError", "DistillLoss",
    "register_loss", "list_losses", "loss_options", "build_loss", "parse_loss_spec", "parse_loss_options",
    "build_losses", "LossSet", "select_rows", "parse_option_value",
]

KINDS = ("face", "classifier")


class LossError(ValueError):
    """A loss specification that cannot be built; the message says what is wrong and what is possible."""


class UnknownLossError(LossError):
    """A loss name (or name/kind pair) that nothing registered."""


class InvalidLossOptionError(LossError):
    """An option the named loss does not take, or a value it cannot use."""


class DistillLoss(nn.Module):
    """Base of every registered loss: ``name`` prefixes its terms; override ``forward``."""

    name: str = ""
    scores_centres: bool = True
    """Whether this loss reads logits over ``TeacherOutput.centres`` (the step's Partial FC sample);
    when no loss of a set does, a step skips choosing them (a collective under torchrun)."""

    def __init__(self, student_dim: int, teacher_dim: int) -> None:
        super().__init__()
        self.student_dim, self.teacher_dim = student_dim, teacher_dim

    def term(self, key: str) -> str:
        """Full name of one of this loss's terms, e.g. ``srd/logits``."""
        return f"{self.name}/{key}"

    def forward(self, student: StudentOutput, teacher: TeacherOutput, batch: Any) -> dict[str, Tensor]:
        """Named, already weighted scalar terms. Override."""
        raise NotImplementedError


LOSSES: Registry[type[DistillLoss]] = Registry("distillation loss", kinds=KINDS, error=UnknownLossError,
                                               package="facekd.distill.losses")
"""Every loss class by name and student kind; each module of this package registers its own on import."""


def register_loss(name: str, kinds: Sequence[str] = KINDS) -> Callable[[type[DistillLoss]], type[DistillLoss]]:
    """Class decorator registering a loss under ``name`` for the student kinds it handles."""
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ValueError(f"unknown kind(s) {bad}; kinds are {KINDS}")

    def wrap(cls: type[DistillLoss]) -> type[DistillLoss]:
        LOSSES.add(name, cls, kinds=tuple(kinds))
        cls.name = name
        return cls
    return wrap


def list_losses(kind: str | None = None) -> list[str]:
    """Registered loss names (for one student kind when given)."""
    return LOSSES.names(kind)


def _lookup(name: str, kind: str) -> type[DistillLoss]:
    if kind not in KINDS:
        raise LossError(f"unknown student kind '{kind}'; kinds are {', '.join(KINDS)}")
    known = list_losses(kind)
    entries = [e for e in LOSSES.entries() if e.name == name]
    for entry in entries:
        if entry.serves(kind):
            return entry.value
    other = sorted({k for e in entries for k in e.kinds})
    hint = (f" ('{name}' exists for {', '.join(other)} students only)" if other
            else did_you_mean(name, known))
    raise UnknownLossError(f"unknown distillation loss '{name}' for {kind} students{hint}; known: {', '.join(known)}")


def loss_options(name: str, kind: str = "face") -> dict[str, Any]:
    """The options a registered loss takes, with their defaults."""
    params = list(inspect.signature(_lookup(name, kind).__init__).parameters.values())[3:]
    return {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY or p.kind is p.POSITIONAL_OR_KEYWORD}


def build_loss(name: str, kind: str = "face", *, student_dim: int, teacher_dim: int, **options: Any) -> DistillLoss:
    """Build a registered loss; unknown options raise an error listing the ones it takes."""
    cls = _lookup(name, kind)
    accepted = loss_options(name, kind)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise InvalidLossOptionError(
            f"loss '{name}' ({kind}) takes no option(s) {', '.join(unknown)}; it takes: "
            + (", ".join(f"{k}={v!r}" for k, v in accepted.items()) or "none"))
    return cls(student_dim, teacher_dim, **options)


def parse_loss_spec(spec: str | Sequence[tuple[str, float]] | Mapping[str, float]) -> list[tuple[str, float]]:
    """``"srd:1.0,kd:0.5"`` (weight 1 when omitted), a list of (name, weight) or a dict -> [(name, weight)]."""
    if isinstance(spec, str):
        pairs: list[tuple[str, float]] = []
        for item in (s.strip() for s in spec.split(",")):
            if not item:
                continue
            name, _, weight = item.partition(":")
            try:
                pairs.append((name.strip(), float(weight) if weight.strip() else 1.0))
            except ValueError:
                raise LossError(f"loss weight in '{item}' is not a number; write name:weight, "
                                "e.g. 'srd:1.0,kd:0.5'") from None
    elif isinstance(spec, Mapping):
        pairs = [(str(k), float(v)) for k, v in spec.items()]
    else:
        pairs = [(str(n), float(w)) for n, w in spec]
    if not pairs:
        raise LossError("no distillation loss given (e.g. 'srd' or 'srd:1.0,kd:0.5')")
    bad = [f"{n}:{w:g}" for n, w in pairs if not w >= 0]  # also NaN
    if bad:
        raise LossError(f"loss weight(s) {', '.join(bad)} must be >= 0 (a negative weight would reward the "
                        "mismatch); e.g. 'srd:1.0,kd:0.5'")
    names = [n for n, _ in pairs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise LossError(f"loss(es) {', '.join(dupes)} listed more than once; give each loss once with its weight")
    return pairs


def parse_option_value(text: str) -> Any:
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text.strip()


def parse_loss_options(items: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``["srd.mode=kl", "kd.T=2"]`` -> ``{"srd": {"mode": "kl"}, "kd": {"T": 2}}`` (numbers, booleans parsed)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, eq, value = item.partition("=")
        loss, dot, option = key.strip().partition(".")
        if not eq or not dot or not loss or not option:
            raise LossError(f"loss option '{item}' is not of the form loss.option=value (e.g. srd.mode=kl)")
        out.setdefault(loss, {})[option] = parse_option_value(value)
    return out


class LossSet(nn.Module):
    """Several losses with weights; ``forward`` returns every term of every loss times its weight.

    Put it in the optimizer and the checkpoints: its parameters are the connectors.
    """

    def __init__(self, losses: Mapping[str, DistillLoss], weights: Mapping[str, float]) -> None:
        super().__init__()
        if set(losses) != set(weights):
            raise LossError("every loss needs a weight")
        self.losses = nn.ModuleDict(dict(losses))
        self.weights = {k: float(v) for k, v in weights.items()}

    def forward(self, student: StudentOutput, teacher: TeacherOutput, batch: Any) -> dict[str, Tensor]:
        """All terms ``{"<loss>/<term>": weight * value}``."""
        terms: dict[str, Tensor] = {}
        for name, loss in self.losses.items():
            for key, value in loss(student, teacher, batch).items():
                terms[key] = value * self.weights[name]
        return terms

    @property
    def scores_centres(self) -> bool:
        """Whether any loss of the set reads logits over the step's sampled centres."""
        return any(loss.scores_centres for loss in self.losses.values())

    def extra_repr(self) -> str:
        return ", ".join(f"{k}:{v:g}" for k, v in self.weights.items())


def build_losses(spec: str | Sequence[tuple[str, float]] | Mapping[str, float], kind: str = "face", *,
                 student_dim: int, teacher_dim: int,
                 options: Mapping[str, Mapping[str, Any]] | None = None) -> LossSet:
    """A ``LossSet`` from ``"srd:1.0,kd:0.5"`` (or (name, weight) pairs); ``options`` per loss name."""
    pairs = parse_loss_spec(spec)
    options = dict(options or {})
    stray = sorted(set(options) - {n for n, _ in pairs})
    if stray:
        raise LossError(f"options given for loss(es) {', '.join(stray)} that are not in the loss list "
                        f"{', '.join(n for n, _ in pairs)}")
    losses = {n: build_loss(n, kind, student_dim=student_dim, teacher_dim=teacher_dim, **options.get(n, {}))
              for n, _ in pairs}
    return LossSet(losses, dict(pairs))


def select_rows(batch: Any, n: int, labeled_only: bool, device: torch.device) -> Tensor | None:
    """Row indices a loss covers: None for all rows, the labeled rows when ``labeled_only``."""
    if not labeled_only:
        return None
    labeled = getattr(batch, "labeled", None)
    if labeled is None:
        raise LossError("labeled_only needs a batch with a 'labeled' mask")
    if labeled.shape[0] != n:
        raise LossError(f"batch has {labeled.shape[0]} rows but the outputs have {n}")
    return torch.nonzero(labeled.to(device)).squeeze(1)
