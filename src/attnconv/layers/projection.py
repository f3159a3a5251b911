"""The output projection of multi-head self-attention, one chunk of images at a time.

The positional fast paths (:mod:`attnconv.layers.dense`, :mod:`attnconv.layers.separable`,
:mod:`attnconv.layers.separable_projected`) all end with the MHSA output projection (PAPER
section 1)::

    MHSA(X) = concat_h[SA_h(X)] W_out + b_out                                          (MHSA)

computed per chunk of images straight into the layer's output; this module holds that step,
the chunk loop and the gradient of ``b_out`` once.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor


def chunk_bounds(batch: int, chunk: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of consecutive chunks of at most ``chunk`` images covering ``batch``."""
    for start in range(0, batch, chunk):
        yield start, min(batch, start + chunk)


def project_chunk(out: Tensor, mixed: Tensor, weight: Tensor | None,
                  bias: Tensor | None) -> None:
    """Write ``mixed W_out^T + b_out`` (PAPER section 1, MHSA) into ``out``, in place.

    With ``weight`` (``(O, heads D)``, ``nn.Linear`` layout) ``mixed`` holds the concatenated
    heads ``concat_h[SA_h]`` of the chunk's tokens, contiguous with ``heads D`` columns, and
    ``out`` the same tokens with ``O`` contiguous columns: one GEMM (``mm``, or ``addmm`` with
    the bias). With ``weight=None`` ``mixed`` is already projected (or there is no projection)
    and has ``out``'s shape: it is copied, or added to ``bias``.
    """
    if weight is not None:
        flat, target = mixed.view(-1, weight.shape[1]), out.view(-1, weight.shape[0])
        if bias is None:
            torch.mm(flat, weight.t(), out=target)
        else:
            torch.addmm(bias, flat, weight.t(), out=target)
    elif bias is None:
        out.copy_(mixed)
    else:
        torch.add(mixed, bias, out=out)


def bias_grad(grad_y: Tensor, acc: torch.dtype, dtype: torch.dtype) -> Tensor:
    """``d b_out = sum_tokens g`` for ``grad_y (..., O)``: summed in ``acc``, cast to ``dtype``."""
    return grad_y.reshape(-1, grad_y.shape[-1]).sum(0, dtype=acc).to(dtype)
