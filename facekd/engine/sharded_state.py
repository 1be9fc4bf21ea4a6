"""Save and restore state whose rows are split over ranks (Partial FC centres and their optimizer state).

A sharded module holds on rank r a contiguous block of rows of each tensor; checkpoints hold the
whole matrix, so a run can resume under another number of processes. Gathering is collective
(every rank must call it); restoring slices this rank's rows out of the full tensors. In one
process every function here is the plain state_dict / load_state_dict.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from facekd.engine import distributed as fdist

__all__ = ["row_sizes", "full_module_state", "load_module_state", "param_index", "full_optimizer_state",
           "load_optimizer_state"]


def row_sizes(t: Tensor) -> list[int]:
    """Every rank's number of rows of ``t`` in rank order (collective)."""
    return [int(n) for n in fdist.all_gather_objects(int(t.shape[0]))]


def _own_rows(t: Tensor, sizes: list[int], rank: int) -> Tensor:
    """Rank ``rank``'s row block of a full tensor whose blocks have ``sizes`` rows."""
    start = sum(sizes[:rank])
    return t[start:start + sizes[rank]]


def full_module_state(module: nn.Module, sharded: bool) -> dict[str, Tensor]:
    """State dict of ``module`` on CPU; a sharded module's rows gathered from every rank (collective)."""
    state = module.state_dict()
    if sharded:
        state = {k: fdist.gather_rows(v, row_sizes(v)) for k, v in state.items()}
    return {k: v.detach().cpu() for k, v in state.items()}


def load_module_state(module: nn.Module, state: Mapping[str, Tensor], sharded: bool, rank: int) -> None:
    """Load a full state dict strictly; a sharded module takes this rank's rows of each tensor."""
    if sharded:
        own = module.state_dict()
        state = {k: _own_rows(v, row_sizes(own[k]), rank) for k, v in state.items()}
    module.load_state_dict(state, strict=True)


def param_index(optimizer: torch.optim.Optimizer, sharded_params: Sequence[Tensor]) -> list[tuple[Tensor, bool]]:
    """(parameter, is sharded) in the optimizer's order."""
    sharded_ids = {id(p) for p in sharded_params}
    return [(p, id(p) in sharded_ids) for g in optimizer.param_groups for p in g["params"]]


def full_optimizer_state(optimizer: torch.optim.Optimizer, sharded_params: Sequence[Tensor]) -> dict[str, Any]:
    """Optimizer state on CPU with the per-row state of sharded parameters gathered (collective)."""
    state = optimizer.state_dict()
    out_state: dict[int, dict[str, Any]] = {}
    for idx, (param, is_sharded) in enumerate(param_index(optimizer, sharded_params)):
        entry = state["state"].get(idx)
        if is_sharded:  # every rank must take part, even when this rank has no state yet
            has = fdist.all_gather_objects(entry is not None)
            if not all(has):
                continue
            sizes = row_sizes(param)
            entry = {k: fdist.gather_rows(v, sizes) if isinstance(v, Tensor) and v.shape == param.shape else v
                     for k, v in entry.items()}
        if entry is not None:
            out_state[idx] = {k: v.detach().cpu() if isinstance(v, Tensor) else v for k, v in entry.items()}
    return {"state": out_state, "param_groups": state["param_groups"]}


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: Mapping[str, Any],
                         sharded_params: Sequence[Tensor], rank: int) -> None:
    """Load a full optimizer state; sharded parameters take this rank's rows of their per-row state."""
    params = param_index(optimizer, sharded_params)
    state: dict[int, dict[str, Any]] = {}
    for idx, entry in saved["state"].items():
        idx = int(idx)
        param, is_sharded = params[idx]
        if is_sharded:
            sizes = row_sizes(param)
            entry = {k: _own_rows(v, sizes, rank) if isinstance(v, Tensor) and v.dim() >= 1
                     and v.shape[1:] == param.shape[1:] and v.shape[0] == sum(sizes) else v
                     for k, v in entry.items()}
        state[idx] = dict(entry)
    optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
