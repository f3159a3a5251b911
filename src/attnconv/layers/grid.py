"""Relative coordinates of a token grid, cached per size and device (never in checkpoints).

A query pixel ``q = (i, j)`` and a key pixel ``k = (k, l)`` are related by the shift
``delta = k - q`` (PAPER section 1). Attention tensors in attnconv are laid out as
``(..., H, W, H, W)``: query row, query column, key row, key column.

The grids are tiny (``size x size`` integers per axis, never ``(HW) x (HW)``) and kept in a plain
dict cache keyed by ``(size, device)``, so they are neither buffers nor part of a ``state_dict``
(unlike the authors' 125 MB relative-coordinate buffer per layer, PAPER section 6). Cached
tensors are read-only by convention: callers derive new tensors from them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

_OFFSETS: dict[tuple[int, str], Tensor] = {}
_MAX_CACHED = 256  # sizes x devices; a long-running process with many sizes starts over


def as_pair(value: int | Sequence[int]) -> tuple[int, int]:
    """A grid size or step as ``(rows, cols)``: ``(v, v)`` for an int ``v``, else its 2 entries."""
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _cacheable(device: torch.device) -> bool:
    # Fake/functional tensors (torch.compile tracing) must not be cached as real constants.
    return not torch.compiler.is_compiling() and device.type != "meta"


def axis_offsets(size: int, *, device: torch.device | str | None = None) -> Tensor:
    """Return ``d[q, k] = k - q`` for one axis of length ``size`` as an int64 ``(size, size)``.

    The result is cached per ``(size, device)``; do not modify it in place.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    key = (size, str(device))
    cached = _OFFSETS.get(key)
    if cached is not None:
        return cached
    # Built outside inference mode so that autograd may save it (index tensors are saved).
    with torch.inference_mode(False), torch.no_grad():
        r = torch.arange(size, device=device)
        offsets = r[None, :] - r[:, None]  # (q, k)
    if _cacheable(device):
        if len(_OFFSETS) >= _MAX_CACHED:
            _OFFSETS.clear()
        _OFFSETS[key] = offsets
    return offsets


def relative_grid(
    height: int,
    width: int,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """Row and column shifts ``delta = k - q`` as broadcastable views.

    Returns ``(d_row, d_col)`` of shapes ``(H, 1, H, 1)`` and ``(1, W, 1, W)``; together they
    broadcast to the full ``(H, W, H, W)`` grid of shifts without materialising it.
    """
    d_row = axis_offsets(height, device=device).to(dtype).view(height, 1, height, 1)
    d_col = axis_offsets(width, device=device).to(dtype).view(1, width, 1, width)
    return d_row, d_col


def clear_cache() -> None:
    """Forget every cached grid (e.g. to release device memory)."""
    _OFFSETS.clear()
