"""Relative coordinates of a token grid, built for the size at hand (no stored buffers).

A query pixel ``q = (i, j)`` and a key pixel ``k = (k, l)`` are related by the shift
``delta = k - q`` (PAPER section 1). Attention tensors in attnconv are laid out as
``(..., H, W, H, W)``: query row, query column, key row, key column.
"""

from __future__ import annotations

import torch
from torch import Tensor


def axis_offsets(size: int, *, device: torch.device | None = None) -> Tensor:
    """Return ``d[q, k] = k - q`` for one axis of length ``size`` as an int64 ``(size, size)``."""
    r = torch.arange(size, device=device)
    return r[None, :] - r[:, None]  # (q, k)


def relative_grid(
    height: int,
    width: int,
    *,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """Row and column shifts ``delta = k - q`` as broadcastable views.

    Returns ``(d_row, d_col)`` of shapes ``(H, 1, H, 1)`` and ``(1, W, 1, W)``; together they
    broadcast to the full ``(H, W, H, W)`` grid of shifts without materialising it.
    """
    d_row = axis_offsets(height, device=device).to(dtype).view(height, 1, height, 1)
    d_col = axis_offsets(width, device=device).to(dtype).view(1, width, 1, width)
    return d_row, d_col
