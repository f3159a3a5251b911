"""Separable positional attention: two small products instead of one ``(HW) x (HW)`` product.

When the positional logits split into a row term plus a column term,
``A_h[(i, j), (k, l)] = r_h[i, k] + c_h[j, l]`` (isotropic quadratic encoding: ``-alpha
((k - i - D_1)^2 + (l - j - D_2)^2)``; learned positional-only row + column scores), the softmax
over the full rectangular grid of keys factorises exactly::

    exp(r[i,k] + c[j,l]) / sum_{k',l'} exp(r[i,k'] + c[j,l'])
        = [exp(r[i,k]) / sum_k' exp(r[i,k'])] * [exp(c[j,l]) / sum_l' exp(c[j,l'])]
        = R[i,k] * C[j,l]

because the denominator is a product of a row sum and a column sum. Averaging the values then
costs ``O(H W (H + W) D)`` per head instead of ``O((H W)^2 D)``::

    out[i, j] = sum_k R[i, k] sum_l C[j, l] v[k, l]

Attention dropout acts on the joint probabilities ``R[i,k] C[j,l]`` and does not factorise, so
layers use this path only when dropout is inactive (evaluation, or ``attn_dropout=0``).
"""

from __future__ import annotations

import torch
from torch import Tensor


def separable_mix(row: Tensor, col: Tensor, values: Tensor) -> Tensor:
    """Apply factorised attention ``R (x) C`` to values.

    Args:
        row: ``(heads, H, H)`` row probabilities ``R[h, i, k]`` (rows sum to 1).
        col: ``(heads, W, W)`` column probabilities ``C[h, j, l]``.
        values: ``(B, heads, H, W, D)``, or ``(B, 1, H, W, D)`` when all heads share them.

    Returns:
        ``(B, heads, H, W, D)`` with ``out[b, h, i, j] = sum_{k,l} R[h,i,k] C[h,j,l] v[b,h,k,l]``.
    """
    if values.shape[1] == 1:
        t = torch.einsum("nik,bkld->bnild", row, values[:, 0])  # (B, heads, H, W, D)
    else:
        t = torch.einsum("nik,bnkld->bnild", row, values)  # (B, heads, H, W, D)
    return torch.einsum("njl,bnild->bnijd", col, t)  # (B, heads, H, W, D)

