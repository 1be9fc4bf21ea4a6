"""Training checkpoints: atomic writes, the newest K kept, the latest found, RNG states as tensors.

A checkpoint is a facekd checkpoint (``facekd.models.weights.make_facekd_checkpoint``) with the
engine's entries added (``ENGINE_KEYS``), so ``load_backbone`` reads it like a released model.
Everything in it is plain (tensors, numbers, strings, lists, dicts) so it loads with
``torch.load(weights_only=True)``. Files are written to a temporary name and renamed: a run
killed at any moment leaves either the previous checkpoint or the new one, never half of one.
"""
from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facekd.models.weights import WeightsFileError, load_weights_file, save_weights_file

__all__ = ["CheckpointError", "CHECKPOINT_DIR", "ENGINE_KEYS", "checkpoint_path", "list_checkpoints",
           "latest_checkpoint", "save_checkpoint", "load_checkpoint", "resolve_resume", "capture_rng",
           "restore_rng", "remove_stale_temporaries"]

CHECKPOINT_DIR = "checkpoints"
ENGINE_KEYS = ("step", "epoch", "modules", "optimizer", "scheduler", "scaler", "rng", "world_size")
"""Entries the engine adds to a facekd checkpoint to resume a run exactly."""
_NAME = re.compile(r"^step_(\d+)\.pt$")


class CheckpointError(ValueError):
    """A checkpoint or run directory that cannot be resumed from; the message names the path."""


def checkpoint_path(out_dir: str | os.PathLike[str], step: int) -> Path:
    """``OUT/checkpoints/step_00000123.pt``."""
    return Path(out_dir) / CHECKPOINT_DIR / f"step_{step:08d}.pt"


def list_checkpoints(out_dir: str | os.PathLike[str]) -> list[Path]:
    """Complete checkpoints of a run directory, oldest first (temporary files are never listed)."""
    folder = Path(out_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name)) and p.is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(out_dir: str | os.PathLike[str]) -> Path | None:
    """The newest checkpoint of a run directory, or None."""
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


def remove_stale_temporaries(out_dir: str | os.PathLike[str]) -> list[Path]:
    """Delete temporary files a killed run left in its checkpoint folder; returns what was removed."""
    folder = Path(out_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def save_checkpoint(state: dict[str, Any], out_dir: str | os.PathLike[str], step: int, keep: int) -> Path:
    """Write ``state`` atomically as the checkpoint of ``step``, then delete all but the newest ``keep``."""
    path = save_weights_file(state, checkpoint_path(out_dir, step))
    if keep > 0:
        for old in list_checkpoints(out_dir)[:-keep]:
            old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint safely (weights_only) and check that it has what resuming needs."""
    try:
        ckpt = load_weights_file(path)
    except WeightsFileError as err:
        raise CheckpointError(str(err)) from None
    missing = [k for k in ENGINE_KEYS if k not in ckpt]
    if ckpt.get("format") != "facekd" or missing:
        raise CheckpointError(f"{path}: not a facekd training checkpoint (missing {', '.join(missing) or 'format'}); "
                              "only checkpoints written by facekd's engine can be resumed")
    return ckpt


def resolve_resume(target: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(run directory, checkpoint file) for ``--resume``: a run directory (its latest checkpoint) or a file."""
    p = Path(target).expanduser()
    if p.is_file():
        run_dir = p.parent.parent if p.parent.name == CHECKPOINT_DIR else p.parent
        return run_dir, p
    if not p.is_dir():
        raise CheckpointError(f"{p}: --resume expects a run directory or a checkpoint file; nothing is there")
    latest = latest_checkpoint(p)
    if latest is None:
        raise CheckpointError(f"{p}: no checkpoint in {p / CHECKPOINT_DIR} to resume from "
                              "(the run stopped before its first checkpoint; start it again without --resume)")
    return p, latest


# ----------------------------------------------------------------------------------------------
# RNG states as plain tensors

def capture_rng() -> dict[str, Any]:
    """This process's torch, CUDA, numpy and Python RNG states, as tensors and numbers."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": [s for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
        "numpy": {"name": str(np_name), "keys": torch.from_numpy(np.asarray(np_keys, np.int64)),
                  "pos": int(np_pos), "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "python": {"version": int(py_version), "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss": py_gauss},
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Put back RNG states captured by ``capture_rng``."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][:torch.cuda.device_count()])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))
