"""Separable positional attention: a row product and a column product instead of ``(HW)^2``.

When the positional logits split into a row term plus a column term,
``A_h[(i, j), (k, l)] = r_h[i, k] + c_h[j, l]`` (isotropic quadratic encoding: ``-alpha
((k - i - D_1)^2 + (l - j - D_2)^2)``; a diagonal ``Sigma^-1``; learned positional-only row +
column scores), the softmax over the full rectangular grid of keys factorises exactly::

    exp(r[i,k] + c[j,l]) / sum_{k',l'} exp(r[i,k'] + c[j,l'])
        = [exp(r[i,k]) / sum_k' exp(r[i,k'])] * [exp(c[j,l]) / sum_l' exp(c[j,l'])]
        = R[i,k] * C[j,l]

because the denominator is a product of a row sum and a column sum. Averaging the values then
costs ``O(H W (H + W) D)`` per head instead of ``O((H W)^2 D)``::

    out[i, j] = sum_k R[i, k] sum_l C[j, l] v[k, l]

With identity values (the paper's heads average the raw features) the whole layer is

    y[b, i, j] = b_out + sum_h sum_{k,l} R_h[i, k] C_h[j, l] x[b, k, l] W_out^(h)      (MHSA)

and :class:`SeparableAttention` computes it in three matrix products per chunk of images
("mix, then project"), every one on the natural layout of its operands so that nothing large is
ever permuted:

1. columns: ``a[b, k, (j, h), :] = sum_l Ccol[(j, h), l] x[b, k, l, :]`` -- one batched product
   whose left factor ``Ccol`` stacks the 9 heads' ``C_h`` (M = 9 W rows, shared by every
   ``(b, k)``);
2. rows: ``m[b, i, (j, h), :] = sum_k R_h[i, k] a[b, k, (j, h), :]`` -- a batched product over
   ``(j, h)`` on strided views of ``a`` and ``m`` (no copy);
3. projection: ``y = m (B H W, heads D) @ W_out^T + b_out`` -- ``m`` is already laid out as the
   reference's concatenation of heads, so this is one GEMM of the reference's size.

The backward pass saves only ``x`` and the two small probability matrices: because the row
mixing, the column mixing and ``W_out`` act on different axes they commute, and every gradient
is a contraction of something cheap to recompute from ``x`` with something computed from the
upstream gradient ``g``:

* ``P = g W_out`` (the gradient of ``m``; one GEMM), ``dW_out = g^T m`` (one GEMM; ``m``
  recomputed by steps 1-2, which cost ~1/20 of a GEMM);
* ``dR_h[i, k] = sum P[b, i, (j, h), d] a[b, k, (j, h), d]``, ``da = R^T P`` (rows, transposed);
* ``dx[b, k, l] = sum_{(j, h)} Ccol[(j, h), l] da[b, k, (j, h)]`` (the head sum fused into one
  product with K = 9 W), ``dCcol = sum da x^T``.

Images are processed in chunks (:func:`default_chunk`): on a CPU the per-chunk intermediates
stay in cache and reuse allocator blocks instead of faulting in fresh pages; on a GPU one chunk
holds the whole batch.

Attention dropout acts on the joint probabilities ``R[i,k] C[j,l]`` and does not factorise. The
layers therefore use this path for dropout only in the opt-in ``attn_dropout_mode="factors"``,
which drops entries of each image's ``R`` and ``C`` instead (see
:func:`factor_dropout`); probability dropout (the paper's) takes the batch-shared dense path.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from attnconv.layers.precision import accumulation_dtype

CPU_CHUNK_BYTES = 8 * 2**20
"""Target size of one chunk's heads-wide intermediate on a CPU (measured: 4-16 MB is best)."""


def separable_mix(row: Tensor, col: Tensor, values: Tensor) -> Tensor:
    """Apply factorised attention ``R (x) C`` to per-head values (generic, any value width).

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


def default_chunk(x: Tensor, heads: int) -> int:
    """Images per chunk: the whole batch on a GPU; ~``CPU_CHUNK_BYTES`` of intermediate on CPU."""
    batch, height, width, dim = x.shape
    if x.device.type != "cpu":
        return max(batch, 1)
    per_image = height * width * heads * dim * x.element_size()
    return max(1, min(batch, CPU_CHUNK_BYTES // max(per_image, 1)))


def _stack_columns(col: Tensor) -> Tensor:
    """``Ccol[..., (j, h), l] = C[..., h, j, l]``: ``(..., heads, W, W) -> (..., W heads, W)``."""
    heads, width = col.shape[-3], col.shape[-1]
    return col.transpose(-3, -2).reshape(*col.shape[:-3], width * heads, width)


def _stack_rows(row: Tensor, width: int) -> Tensor:
    """``Rexp[..., (j, h)] = R[..., h]``: ``(..., heads, H, H) -> (..., W heads, H, H)``."""
    lead, (heads, height) = row.shape[:-3], row.shape[-3:-1]
    expanded = row.unsqueeze(-4).expand(*lead, width, heads, height, height)
    return expanded.reshape(*lead, width * heads, height, height)


def _per_image(t: Tensor, shared: bool, start: int, stop: int) -> Tensor:
    """Rows ``start:stop`` of a per-image factor, or the shared factor itself."""
    return t if shared else t[start:stop]


def _mix_columns(ccol: Tensor, x: Tensor, shared: bool) -> Tensor:
    """Step 1: ``a[b, k, (j,h), :] = sum_l Ccol[(j,h), l] x[b, k, l, :]`` -> ``(b, H, W heads, D)``.

    ``ccol`` is ``(W heads, W)`` (shared) or ``(b, W heads, W)`` (one per image).
    """
    b, height, width, dim = x.shape
    rows = ccol.shape[-2]
    if shared:
        left = ccol.expand(b * height, rows, width)  # stride-0 batch: no copy
    else:
        left = ccol[:, None].expand(b, height, rows, width).reshape(b * height, rows, width)
    a = torch.bmm(left, x.reshape(b * height, width, dim))  # (b H, W heads, D)
    return a.view(b, height, rows, dim)


def _mix_rows(rexp: Tensor, a: Tensor, out: Tensor, shared: bool, transpose: bool) -> Tensor:
    """Step 2: ``out[b, i, (j,h), :] = sum_k R_h[i, k] a[b, k, (j,h), :]`` (or with ``R^T``).

    ``rexp`` is ``(W heads, H, H)`` (shared) or ``(b, W heads, H, H)``. Per image, one batched
    product over the ``(j, h)`` pairs reads ``a`` and writes ``out`` through strided views.
    """
    for n in range(a.shape[0]):
        r = rexp if shared else rexp[n]  # (W heads, H, H)
        if transpose:
            r = r.transpose(1, 2)
        torch.bmm(r, a[n].transpose(0, 1), out=out[n].transpose(0, 1))  # ((j,h), i, D)
    return out


class SeparableAttention(torch.autograd.Function):
    """``y = b_out + sum_h (R_h (x) C_h) x W_out^(h)`` with identity values, in chunks.

    Inputs: ``x (B, H, W, D)``; ``row (heads, H, H)`` or ``(B, heads, H, H)``; ``col (heads, W,
    W)`` or ``(B, heads, W, W)``; ``weight (O, heads D)`` (``nn.Linear`` layout, columns ordered
    ``(h, d)``); ``bias (O,)`` or ``None``; ``chunk`` (images per chunk). All floating inputs
    share one dtype. Returns ``(B, H, W, O)``. See the module docstring for the algorithm.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, row: Tensor, col: Tensor, weight: Tensor | None,
                bias: Tensor | None, chunk: int) -> Tensor:
        batch, height, width, dim = x.shape
        heads = row.shape[-3]
        shared = row.dim() == 3
        ccol, rexp = _stack_columns(col), _stack_rows(row, width)
        if weight is None:  # mixing only: y = m, the concatenated heads (B, H, W, heads D)
            y = x.new_empty(batch, height, width, heads * dim)
        else:
            y = x.new_empty(batch, height, width, weight.shape[0])
        for s in range(0, batch, chunk):
            e = min(batch, s + chunk)
            a = _mix_columns(_per_image(ccol, shared, s, e), x[s:e], shared)  # (b, H, W h, D)
            if weight is None:
                _mix_rows(_per_image(rexp, shared, s, e), a, y[s:e].view(a.shape), shared,
                          transpose=False)
                continue
            m = _mix_rows(_per_image(rexp, shared, s, e), a, torch.empty_like(a), shared,
                          transpose=False)  # (b, H, (W, heads), D) = tokens x (h, d)
            flat = m.view(-1, heads * dim)
            target = y[s:e].view(-1, weight.shape[0])  # (b H W, O), contiguous rows of y
            if bias is None:
                torch.mm(flat, weight.t(), out=target)
            else:
                torch.addmm(bias, flat, weight.t(), out=target)
        ctx.save_for_backward(x, row, col, weight)
        ctx.chunk = chunk
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, ...]:
        x, row, col, weight = ctx.saved_tensors
        need_x, need_row, need_col, need_w, need_b, _ = ctx.needs_input_grad
        batch, height, width, dim = x.shape
        heads = row.shape[-3]
        out_dim = heads * dim if weight is None else weight.shape[0]
        shared, chunk = row.dim() == 3, ctx.chunk
        acc = accumulation_dtype(x.dtype)
        grad_y = grad_y.contiguous().to(x.dtype)
        ccol, rexp = _stack_columns(col), _stack_rows(row, width)

        grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device) if need_x else None
        grad_w = None
        if need_w and weight is not None:
            grad_w = torch.zeros(weight.shape, dtype=acc, device=x.device)
        grad_rexp = torch.zeros(rexp.shape, dtype=acc, device=x.device) if need_row else None
        grad_ccol = torch.zeros(ccol.shape, dtype=acc, device=x.device) if need_col else None
        for s in range(0, batch, chunk):
            e = min(batch, s + chunk)
            xs, g = x[s:e], grad_y[s:e].view(-1, out_dim)  # (b, H, W, D), (b H W, O)
            r_s, c_s = _per_image(rexp, shared, s, e), _per_image(ccol, shared, s, e)
            a = _mix_columns(c_s, xs, shared)  # (b, H, W heads, D)
            buffer = torch.empty_like(a)
            if grad_w is not None:  # dW_out = g^T m, with m = rows(columns(x)) recomputed
                m = _mix_rows(r_s, a, buffer, shared, transpose=False)
                grad_w += (g.t() @ m.view(-1, heads * dim)).to(acc)  # (O, heads D)
            if not (need_x or need_row or need_col):
                continue
            # dm = g W_out (or g itself when the layer only mixes): (b, H, W heads, D)
            p = (g if weight is None else g @ weight).view(a.shape)
            if need_row:  # dR[(j,h), i, k] = sum_d P[b, i, (j,h), d] a[b, k, (j,h), d]
                for n in range(e - s):
                    prod = torch.bmm(p[n].transpose(0, 1), a[n].permute(1, 2, 0))
                    if shared:
                        grad_rexp += prod.to(acc)  # ((j,h), H, H)
                    else:
                        grad_rexp[s + n] += prod.to(acc)
            if need_x or need_col:
                da = _mix_rows(r_s, p, buffer, shared, transpose=True)  # (b, H, W heads, D)
                b = e - s
                da_flat = da.view(b * height, width * heads, dim)
                if need_x:  # dx[b,k,l] = sum_{(j,h)} Ccol[(j,h), l] da[b,k,(j,h)]: K = W heads
                    if shared:
                        left = c_s.t().expand(b * height, width, width * heads)
                    else:
                        left = c_s.transpose(1, 2)[:, None].expand(
                            b, height, width, width * heads).reshape(b * height, width, -1)
                    torch.bmm(left, da_flat, out=grad_x[s:e].view(b * height, width, dim))
                if need_col:  # dCcol[(j,h), l] = sum_{b,k,d} da[b,k,(j,h),d] x[b,k,l,d]
                    prod = torch.bmm(da_flat, xs.reshape(b * height, width, dim).transpose(1, 2))
                    if shared:
                        grad_ccol += prod.sum(0).to(acc)
                    else:
                        grad_ccol[s:e] += prod.view(b, height, *prod.shape[1:]).sum(1).to(acc)

        grad_row = grad_col = grad_b = None
        if need_row:
            lead = rexp.shape[:-3]
            grad_row = grad_rexp.view(*lead, width, heads, height, height).sum(-4).to(row.dtype)
        if need_col:
            lead = ccol.shape[:-2]
            grad_col = grad_ccol.view(*lead, width, heads, width).transpose(-3, -2)
            grad_col = grad_col.to(col.dtype)
        if need_b and weight is not None:
            grad_b = grad_y.view(-1, out_dim).sum(0, dtype=acc).to(weight.dtype)
        return (grad_x, grad_row, grad_col,
                grad_w.to(weight.dtype) if grad_w is not None else None, grad_b, None)


def separable_attention(x: Tensor, row: Tensor, col: Tensor, weight: Tensor | None = None,
                        bias: Tensor | None = None, *, chunk: int | None = None) -> Tensor:
    """Positional-only separable attention with identity values, and the output projection.

    ``y[b, i, j] = bias + sum_h sum_{k,l} R_h[i,k] C_h[j,l] x[b,k,l] W^(h)`` where ``W^(h)`` is
    block ``h`` of ``weight (O, heads D)``. ``row``/``col`` are shared ``(heads, ., .)`` or per
    image ``(B, heads, ., .)``. With ``weight=None`` return the mixed heads
    ``m[b, i, j, (h, d)] = sum_{k,l} R_h[i,k] C_h[j,l] x[b,k,l,d]`` instead (the input of the
    output projection). Exact; see :class:`SeparableAttention`.

    Returns:
        ``(B, H, W, O)``, or ``(B, H, W, heads D)`` when ``weight`` is ``None``.
    """
    heads = row.shape[-3]
    if weight is not None and weight.shape[1] != heads * x.shape[-1]:
        raise ValueError(f"weight {tuple(weight.shape)} does not match {heads} heads of width "
                         f"{x.shape[-1]}")
    chunk = default_chunk(x, heads) if chunk is None else max(1, int(chunk))
    return SeparableAttention.apply(x.contiguous(), row, col, weight, bias, chunk)


def factor_dropout(row: Tensor, col: Tensor, batch: int, p: float) -> tuple[Tensor, Tensor]:
    """Opt-in dropout that keeps the attention separable (``attn_dropout_mode="factors"``).

    Every image gets its own copy of the row and column probabilities; each entry of ``R`` and
    of ``C`` is dropped independently with probability ``q = 1 - sqrt(1 - p)`` and the survivors
    scaled by ``1 / (1 - q)``. The joint weight ``R~[i,k] C~[j,l]`` of a (query, key) pair is
    then kept with probability ``(1 - q)^2 = 1 - p`` and scaled by ``1 / (1 - p)`` -- the same
    marginal law and expectation as the paper's dropout on the probabilities -- but the masks are
    correlated: all pairs sharing ``(i, k)`` (or ``(j, l)``) are dropped together.

    Returns:
        ``(B, heads, H, H)`` and ``(B, heads, W, W)``.
    """
    q = 1.0 - math.sqrt(1.0 - p)
    row_b = F.dropout(row.expand(batch, *row.shape), q, training=True)
    col_b = F.dropout(col.expand(batch, *col.shape), q, training=True)
    return row_b, col_b
