"""Batch-shared dense positional attention: one ``(N heads) x N`` matrix for the whole batch.

Positional-only attention ``A_h[q, k]`` (``N = H W`` tokens) is the same for every image, so it
is computed once per forward pass, independently of the batch (PAPER section 1, last term of the
relative encoding). With identity values the layer is

    y[b, q] = b_out + sum_h sum_k A_h[q, k] x[b, k] W_out^(h)                          (MHSA)

We stack the heads along the query axis, ``Acat[(q, h), k] = A_h[q, k]`` (a ``(N heads, N)``
matrix built once from the small ``(heads, N, N)`` probabilities), and compute "mix, then
project":

1. ``m[b] = Acat @ x[b]`` -- ``(N heads, N) @ (N, D)``, one batched product whose left factor is
   shared by the batch (a stride-0 view, no copy). Its output ``m[b, q, h, :]`` is laid out
   exactly as the reference's concatenation of heads ``(tokens, heads D)``...
2. ``y = m (B N, heads D) @ W_out^T + b_out`` -- ...so the output projection is one GEMM on ``m``
   as it stands: no transpose of the heads-times-larger tensor, in either direction (the
   gradient of ``m`` is ``g W_out``, already in this layout; that of ``Acat`` is
   ``dm[b] x[b]^T``, summed over the batch).

Attention dropout keeps the paper's semantics exactly: every image draws its own mask over the
probabilities ``A_h[q, k]`` (``Acat`` expanded to ``(B, N heads, N)`` and dropped entrywise,
survivors scaled by ``1 / (1 - p)``), so step 1 multiplies each image by its own matrix. This is
the one place where a batch-sized attention tensor exists (the reference has it too).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def stack_heads(probs: Tensor) -> Tensor:
    """``Acat[(q, h), k] = A[h, q, k]``: ``(heads, N, N) -> (N heads, N)`` (a small copy)."""
    heads, n, _ = probs.shape
    return probs.transpose(0, 1).reshape(n * heads, n)


def shared_attention(x: Tensor, probs: Tensor, weight: Tensor | None = None,
                     bias: Tensor | None = None, *, dropout: float = 0.0) -> Tensor:
    """Batch-shared positional attention with identity values and the output projection.

    Args:
        x: ``(B, H, W, D)`` channels-last tokens (the values, shared by every head).
        probs: ``(heads, N, N)`` attention probabilities, ``N = H W``, shared by the batch.
        weight: ``(O, heads D)`` output projection (``nn.Linear`` layout, columns ``(h, d)``),
            or ``None`` to return the mixed heads ``m`` (the projection's input).
        bias: ``(O,)`` or ``None``.
        dropout: probability of dropping each ``A_h[q, k]`` of each image (0: no dropout).

    Returns:
        ``(B, H, W, O)``, or ``m`` ``(B, H, W, heads D)`` when ``weight`` is ``None``.
    """
    batch, height, width, dim = x.shape
    heads, n = probs.shape[0], height * width
    acat = stack_heads(probs)  # (N heads, N)
    values = x.reshape(batch, n, dim)  # (B, N, D)
    if dropout > 0.0:
        # One mask per image: F.dropout draws every entry of (B, N heads, N) independently.
        left = F.dropout(acat.expand(batch, -1, -1), dropout, training=True)  # (B, N heads, N)
    else:
        left = acat.expand(batch, -1, -1)  # stride-0 view: one matrix for the whole batch
    mixed = torch.bmm(left, values)  # (B, N heads, D) = (b, q, h, d)
    mixed = mixed.view(batch, height, width, heads * dim)  # the concatenated heads, as is
    return mixed if weight is None else F.linear(mixed, weight, bias)  # (B, H, W, O)
