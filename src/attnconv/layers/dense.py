"""Batch-shared dense positional attention: one ``(N heads) x N`` matrix for the whole batch.

Positional-only attention ``A_h[q, k]`` (``N = H W`` tokens) is the same for every image, so it
is computed once per forward pass, independently of the batch (PAPER section 1, last term of the
relative encoding). With identity values the layer is

    y[b, q] = b_out + sum_h sum_k A_h[q, k] x[b, k] W_out^(h)                          (MHSA)

We stack the heads along the query axis, ``Acat[(q, h), k] = A_h[q, k]`` (the layer computes
the logits directly in this ``(N, heads, N)`` layout, so stacking is a view), and compute "mix,
then project" per chunk of images (:class:`SharedDenseAttention`):

1. ``m[b] = Acat @ x[b]`` -- ``(N heads, N) @ (N, D)``, one batched product whose left factor is
   shared by the batch (a stride-0 view, no copy). Its output ``m[b, q, h, :]`` is laid out
   exactly as the reference's concatenation of heads ``(tokens, heads D)``...
2. ``y = m (b N, heads D) @ W_out^T + b_out`` -- ...so the output projection is one GEMM on ``m``
   as it stands: no transpose of the heads-times-larger tensor, in either direction.

When no per-image mask is drawn (no dropout, or the authors' batch-shared mask applied to
``Acat`` beforehand) :class:`BatchSharedDense` runs step 1 as one GEMM ``Acat @ X`` with the
images side by side, ``X (N, b D)``, and permutes its output once into step 2's layout; it can
keep ``m`` for backward (``save_mixed``, what the layer does) instead of recomputing it. The
per-image-mask case, :class:`SharedDenseAttention`, is described next.

Backward, per chunk, from ``g = dy``: ``P = g W_out`` (the gradient of ``m``, already in ``m``'s
layout), ``dAcat = sum_b P[b] x[b]^T``, ``dx[b] = Acat^T P[b]``, and ``dW_out = g^T m`` with ``m``
*recomputed* (one more ``Acat x`` product, ~12% more arithmetic for the layer) instead of
saved: a training step keeps only ``x``, ``Acat`` and, with dropout, a one-byte mask per
probability -- not the heads-times-larger ``m`` nor a dropped copy of the probabilities.

Attention dropout. With the authors' semantics (``attn_dropout_mode="batch"``) one mask is
drawn per forward pass on the ``(heads, N, N)`` probabilities and shared by every image: the
layer multiplies ``Acat`` by it before calling :func:`shared_attention` (``dropout=0``), so the
left factor stays one shared matrix and the cost is the no-dropout cost. The per-image law
(``attn_dropout_mode="probabilities"``, ``dropout=p`` here) draws an independent mask per image
over the probabilities ``A_h[q, k]`` (:func:`dropout_mask`), survivors scaled by
``1 / (1 - p)``, so step 1 multiplies each image by its own matrix ``Acat * mask_b / (1 - p)``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from attnconv.layers.precision import accumulation_dtype
from attnconv.layers.projection import bias_grad, chunk_bounds, project_chunk
from attnconv.layers.separable import CPU_CHUNK_BYTES


def stack_heads(probs: Tensor) -> Tensor:
    """``Acat[(q, h), k] = A[h, q, k]``: ``(heads, N, N) -> (N heads, N)``.

    A view when ``probs`` is itself a transposed view of an ``(N, heads, N)`` tensor (as the
    layer builds it), else a copy.
    """
    heads, n, _ = probs.shape
    return probs.transpose(0, 1).reshape(n * heads, n)


SHARED_CHUNK_BYTES = 128 * 2**20
"""Target size of one chunk's mixed heads ``m`` on a CPU when the attention is one matrix for the
whole batch (no per-image mask): the products then run on many images at once, which the
per-image budget :data:`CPU_CHUNK_BYTES` (one image at the paper's size) made ~1.8x slower on
an AVX-512 Xeon (docs/performance.md)."""


def dense_chunk(x: Tensor, heads: int, *, shared: bool = False) -> int:
    """Images per chunk: the whole batch on a GPU; on a CPU ~``CPU_CHUNK_BYTES`` of
    intermediates per chunk, or ~``SHARED_CHUNK_BYTES`` of ``m`` when the left factor is shared."""
    batch, height, width, dim = x.shape
    if x.device.type != "cpu":
        return max(batch, 1)
    n = height * width
    if shared:
        per_image, budget = n * heads * dim * x.element_size(), SHARED_CHUNK_BYTES
    else:
        per_image, budget = n * heads * (dim + n) * x.element_size(), CPU_CHUNK_BYTES
    return max(1, min(batch, budget // max(per_image, 1)))


def dropout_mask(images: int, rows: int, keys: int, p: float, *,
                 device: torch.device) -> Tensor:
    """A boolean keep-mask ``(images, rows, keys)``, every entry kept independently w.p. ``1-p``."""
    return torch.rand(images, rows, keys, device=device) >= p


def _left(acat: Tensor, mask: Tensor | None, start: int, stop: int, p: float) -> Tensor:
    """Each image's attention matrix: ``Acat`` (shared view) or ``Acat * mask_b / (1 - p)``."""
    if mask is None:
        return acat.expand(stop - start, *acat.shape)  # stride-0 batch: no copy
    return acat * mask[start:stop] * (1.0 / (1.0 - p))  # (b, N heads, N)


class SharedDenseAttention(torch.autograd.Function):
    """``y = b_out + sum_h A_h x W_out^(h)`` for batch-shared ``A``, chunked, ``m`` recomputed.

    Inputs: ``x (B, H, W, D)``; ``acat (N heads, N)``; ``weight (O, heads D)``; ``bias (O,)`` or
    ``None``; dropout probability ``p``; ``chunk`` (images per chunk). See the module docstring.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, acat: Tensor, weight: Tensor, bias: Tensor | None,
                p: float, chunk: int) -> Tensor:
        batch, height, width, dim = x.shape
        n, out_dim = height * width, weight.shape[0]
        rows = acat.shape[0]
        mask = (torch.empty(batch, rows, n, dtype=torch.bool, device=x.device) if p > 0
                else None)
        y = x.new_empty(batch, height, width, out_dim)
        for s, e in chunk_bounds(batch, chunk):
            if mask is not None:
                mask[s:e] = dropout_mask(e - s, rows, n, p, device=x.device)
            m = torch.bmm(_left(acat, mask, s, e, p), x[s:e].view(e - s, n, dim))  # (b, N h, D)
            project_chunk(y[s:e], m, weight, bias)  # m read as (b N, heads D): tokens x (h, d)
        ctx.save_for_backward(x, acat, weight, mask)
        ctx.p, ctx.chunk = p, chunk
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, ...]:
        p, chunk = ctx.p, ctx.chunk
        x, acat, weight, mask = ctx.saved_tensors
        need_x, need_a, need_w, need_b, _, _ = ctx.needs_input_grad
        batch, height, width, dim = x.shape
        n, out_dim = height * width, weight.shape[0]
        acc = accumulation_dtype(x.dtype)
        grad_y = grad_y.contiguous().to(x.dtype)
        grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device) if need_x else None
        grad_a = torch.zeros(acat.shape, dtype=acc, device=x.device) if need_a else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=x.device) if need_w else None
        for s, e in chunk_bounds(batch, chunk):
            xs = x[s:e].view(e - s, n, dim)  # (b, N, D)
            g = grad_y[s:e].view(-1, out_dim)  # (b N, O)
            left = _left(acat, mask, s, e, p)  # (b, N heads, N)
            if grad_w is not None:  # dW_out = g^T m, m recomputed
                m = torch.bmm(left, xs)
                grad_w += (g.t() @ m.view(g.shape[0], -1)).to(acc)
                del m
            if not (need_x or need_a):
                continue
            dm = (g @ weight).view(e - s, -1, dim)  # (b, N heads, D)
            if grad_x is not None:  # dx[b] = left_b^T dm[b]
                torch.bmm(left.transpose(1, 2), dm, out=grad_x[s:e].view(e - s, n, dim))
            if grad_a is not None:  # dAcat = sum_b (dm[b] x[b]^T) * mask_b / (1 - p)
                if mask is None and grad_a.dtype == dm.dtype:
                    # Shared left factor: one GEMM over the chunk, (N heads, b D) @ (b D, N).
                    dm_cat = dm.transpose(0, 1).reshape(dm.shape[1], -1)
                    grad_a.addmm_(dm_cat, xs.transpose(1, 2).reshape(-1, n))
                else:
                    d_left = torch.bmm(dm, xs.transpose(1, 2))  # (b, N heads, N)
                    if mask is not None:
                        d_left = d_left * mask[s:e] * (1.0 / (1.0 - p))
                    grad_a += d_left.sum(0).to(acc)
        grad_b = bias_grad(grad_y, acc, weight.dtype) if need_b else None
        return (grad_x, None if grad_a is None else grad_a.to(acat.dtype),
                None if grad_w is None else grad_w.to(weight.dtype), grad_b, None, None)


class BatchSharedDense(torch.autograd.Function):
    """``y = b_out + sum_h A_h x W_out^(h)`` with one ``Acat`` for every image, as single GEMMs.

    Per chunk of ``b`` images the values are laid out ``X (N, b D)`` (a small copy) so that
    mixing is one ``(N heads, N) @ (N, b D)`` product (no stride-0 batched product, which MKL
    runs ~2x slower than this GEMM on an AVX-512 Xeon, docs/performance.md); its output is
    permuted once into the projection's ``(b N, heads D)`` layout. Backward: ``dm = g W_out``
    permuted back to ``(N heads, b D)``, then ``dX = Acat^T dm`` and ``dAcat += dm X^T``, one
    GEMM each. With ``save_mixed`` the projection input ``m`` is kept for ``dW_out`` (as a plain
    ``nn.Linear`` would), otherwise recomputed.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, acat: Tensor, weight: Tensor, bias: Tensor | None,
                chunk: int, save_mixed: bool) -> Tensor:
        batch, height, width, dim = x.shape
        n, rows, out_dim = height * width, acat.shape[0], weight.shape[0]
        heads = rows // n
        y = x.new_empty(batch, height, width, out_dim)
        saved = (x.new_empty(batch, n, heads * dim)
                 if save_mixed and ctx.needs_input_grad[2] else None)
        for s, e in chunk_bounds(batch, chunk):
            flat = _mixed(x, acat, s, e, None if saved is None else saved[s:e])
            project_chunk(y[s:e], flat, weight, bias)
        ctx.save_for_backward(x, acat, weight, saved)
        ctx.chunk = chunk
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, ...]:
        x, acat, weight, saved = ctx.saved_tensors
        need_x, need_a, need_w, need_b = ctx.needs_input_grad[:4]
        batch, height, width, dim = x.shape
        n, rows, out_dim = height * width, acat.shape[0], weight.shape[0]
        heads = rows // n
        acc = accumulation_dtype(x.dtype)
        grad_y = grad_y.contiguous().to(x.dtype)
        grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device) if need_x else None
        grad_a = torch.zeros(acat.shape, dtype=acc, device=x.device) if need_a else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=x.device) if need_w else None
        for s, e in chunk_bounds(batch, ctx.chunk):
            b = e - s
            g = grad_y[s:e].view(-1, out_dim)  # (b N, O)
            if grad_w is not None:  # dW_out = g^T m
                m = (saved[s:e].view(b * n, -1) if saved is not None
                     else _mixed(x, acat, s, e, None))
                grad_w += (g.t() @ m).to(acc)
                del m
            if not (need_x or need_a):
                continue
            dm = (g @ weight).view(b, n, heads, dim)  # the gradient of m
            dm_t = dm.permute(1, 2, 0, 3).reshape(rows, b * dim)  # (N heads, b D)
            if grad_x is not None:  # dX = Acat^T dm
                dx_t = (acat.t() @ dm_t).view(n, b, dim)
                grad_x[s:e].view(b, n, dim).copy_(dx_t.transpose(0, 1))
            if grad_a is not None:  # dAcat = dm X^T
                x_t = x[s:e].view(b, n, dim).transpose(0, 1).reshape(n, b * dim)
                if grad_a.dtype == dm_t.dtype:
                    grad_a.addmm_(dm_t, x_t.t())
                else:
                    grad_a += (dm_t @ x_t.t()).to(acc)
        grad_b = bias_grad(grad_y, acc, weight.dtype) if need_b else None
        return (grad_x, None if grad_a is None else grad_a.to(acat.dtype),
                None if grad_w is None else grad_w.to(weight.dtype), grad_b, None, None)


def _mixed(x: Tensor, acat: Tensor, start: int, stop: int, out: Tensor | None) -> Tensor:
    """``m`` of images ``start:stop`` as ``(b N, heads D)``: one GEMM, one permuting copy."""
    _, height, width, dim = x.shape
    n, b = height * width, stop - start
    heads = acat.shape[0] // n
    x_t = x[start:stop].view(b, n, dim).transpose(0, 1).reshape(n, b * dim)  # (N, b D)
    m_t = (acat @ x_t).view(n, heads, b, dim)  # rows (q, h), columns (image, d)
    if out is None:
        out = x.new_empty(b, n, heads * dim)
    out.view(b, n, heads, dim).copy_(m_t.permute(2, 0, 1, 3))
    return out.view(b * n, heads * dim)


def shared_attention(x: Tensor, probs: Tensor, weight: Tensor | None = None,
                     bias: Tensor | None = None, *, dropout: float = 0.0,
                     chunk: int | None = None, save_mixed: bool = False) -> Tensor:
    """Batch-shared positional attention with identity values and the output projection.

    Args:
        x: ``(B, H, W, D)`` channels-last tokens (the values, shared by every head).
        probs: ``(heads, N, N)`` attention probabilities, ``N = H W``, shared by the batch.
        weight: ``(O, heads D)`` output projection (``nn.Linear`` layout, columns ``(h, d)``),
            or ``None`` to return the mixed heads ``m`` (plain autograd, ``m`` saved).
        bias: ``(O,)`` or ``None``.
        dropout: probability of dropping each ``A_h[q, k]`` of each image (0: no dropout).
        chunk: images per chunk (default :func:`dense_chunk`).
        save_mixed: without dropout, keep the projection input ``m`` for ``dW_out`` instead of
            recomputing it (one ``(N heads, N)`` product per image fewer in backward, ``B N
            heads D`` more memory held until backward).

    Returns:
        ``(B, H, W, O)``, or ``m`` ``(B, H, W, heads D)`` when ``weight`` is ``None``.
    """
    batch, height, width, dim = x.shape
    heads = probs.shape[0]
    acat = stack_heads(probs)  # (N heads, N)
    if weight is not None:
        shared = dropout == 0.0
        chunk = dense_chunk(x, heads, shared=shared) if chunk is None else max(1, int(chunk))
        if shared:  # one matrix for every image: single GEMMs (BatchSharedDense)
            return BatchSharedDense.apply(x.contiguous(), acat, weight, bias, chunk, save_mixed)
        return SharedDenseAttention.apply(x.contiguous(), acat, weight, bias, dropout, chunk)
    left = acat.expand(batch, -1, -1)  # stride-0 view: one matrix for the whole batch
    if dropout > 0.0:  # one mask per image over (B, N heads, N)
        left = F.dropout(left, dropout, training=True)
    mixed = torch.bmm(left, x.reshape(batch, height * width, dim))  # (B, N heads, D)
    return mixed.view(batch, height, width, heads * dim)  # the concatenated heads, as is
