"""Assertions shared by several test files."""
from __future__ import annotations

import torch


def assert_states_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], rel: float = 1e-4) -> None:
    """Same keys; float tensors equal within ``rel`` of max(1, |b|), the others exactly."""
    assert a.keys() == b.keys()
    for k in a:
        if a[k].is_floating_point():
            scale = max(1.0, float(b[k].abs().max()))
            assert float((a[k] - b[k]).abs().max()) <= rel * scale, k
        else:
            assert torch.equal(a[k], b[k]), k
