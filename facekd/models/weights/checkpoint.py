"""facekd's checkpoint schema (``make_facekd_checkpoint``, ``FACEKD_KEYS``) and the state-dict helpers
every layout shares (wrapper prefixes, what a state dict is).
"""
from __future__ import annotations

from typing import Any, Mapping

from torch import Tensor, nn

__all__ = [
    "FACEKD_FORMAT", "FACEKD_VERSION", "FACEKD_KEYS", "WRAPPER_PREFIXES", "strip_wrapper_prefixes", "is_state_dict",
    "make_facekd_checkpoint",
]


FACEKD_FORMAT = "facekd"
"""Value of the ``format`` key that marks a facekd checkpoint."""


FACEKD_VERSION = 1
"""Version of the facekd checkpoint layout written by ``make_facekd_checkpoint``."""


FACEKD_KEYS = ("format", "version", "arch", "arch_options", "backbone", "head", "head_name", "config")
"""Keys every facekd checkpoint has; the engine may add more (optimizer, scheduler, step...)."""


WRAPPER_PREFIXES = ("module.", "_orig_mod.")
"""Key prefixes added by DataParallel/DDP and torch.compile; stripped when every key has one."""


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


def is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())


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
