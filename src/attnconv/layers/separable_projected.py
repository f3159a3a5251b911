"""Separable attention, "project, then mix": large products only, for small token grids.

A second kernel for the separable layer of :mod:`attnconv.layers.separable`: the same function
(identity values, batch-shared ``R_h`` and ``C_h``, the output projection fused)::

    y[b, i, j] = b_out + sum_h sum_{k,l} R_h[i, k] C_h[j, l] x[b, k, l] W_out^(h)     (MHSA)

but with the projection *first*, which lets the head sum ride on the last mixing product. Per
chunk of ``c`` images, with ``x`` transposed once to ``xq[l, k, b, :]`` (a copy of ``x``'s size):

1. projection, per head: ``z[h, l, k, b, :] = xq[l, k, b, :] W_h^T`` -- one batched product
   over the heads (``K = D``, left factor shared);
2. rows: ``v[(h, l), i, (b, o)] = sum_k R_h[i, k] z[(h, l), k, (b, o)]`` -- one batched product
   over ``(head, column)`` with ``N = c O`` (the ``R_h`` repeated ``W`` times: tiny);
3. columns and the head sum together: ``y[j, (i, b, o)] = sum_{(h, l)} Ccat[j, (h, l)]
   v[(h, l), (i, b, o)]`` with ``Ccat[j, (h, l)] = C_h[j, l]`` -- one GEMM with ``K = heads W``
   whose output is the layer's output (``D_out`` wide, not ``heads D`` wide), transposed back
   to ``(b, i, j, o)`` with the bias added.

Backward from ``g``: ``dv = Ccat^T g`` and ``dCcat = g v^T`` (GEMMs); ``dz = R^T dv`` and
``dR = sum_l dv z^T`` (batched over ``(h, l)``); ``dW_h = xq^T dz_h`` (batched over heads) and
``dxq = sum_h dz_h W_h`` (one GEMM with ``K = heads O`` after moving the heads next to the
channels, a copy in cache). Unlike the "mix, then project" kernel
every product here has a large free dimension (``c O`` or ``H c O`` or ``T = W H c``), and
only two heads-wide tensors exist per chunk (``z``, ``v``) plus two in the backward pass.

The forward pass keeps only ``x`` (and the small factors); the backward pass recomputes ``z`` and
``v`` chunk by chunk (steps 1-2, a quarter of its arithmetic), while they are in cache. On a CPU
the chunks are small (:data:`CPU_CHUNK_BYTES`): the products with ``K = H`` or ``K = W`` are
bound by memory traffic, and a chunk's heads-wide tensors then stay in the core's L2 cache.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from attnconv.layers.precision import accumulation_dtype
from attnconv.layers.projection import bias_grad, chunk_bounds, project_chunk

CPU_CHUNK_BYTES = 2**20
"""Target size of one chunk's heads-wide tensor per CPU thread (half a core's L2 cache here;
measured on one thread: 4 images of the demo model, 1 image from ``D = 64`` on, were the
fastest; docs/performance.md)."""
MAX_DIM = 128
"""Largest token width for which :func:`separable_attention` uses this kernel automatically
(measured faster than "mix, then project" at ``D`` = 32, 64, 128, slower at 400)."""


def _head_weights(weight: Tensor, heads: int) -> Tensor:
    """``W_h^T`` stacked: ``(O, heads D) -> (heads, D, O)`` (contiguous; tiny)."""
    out_dim = weight.shape[0]
    return weight.view(out_dim, heads, -1).permute(1, 2, 0).contiguous()


def _row_factors(row: Tensor, width: int) -> Tensor:
    """``R_h`` for every ``(h, l)``: ``(heads, H, H) -> (heads W, H, H)`` (tiny)."""
    heads, height, _ = row.shape
    return row.unsqueeze(1).expand(heads, width, height, height).reshape(heads * width, height,
                                                                          height)


def _project_rows(xq: Tensor, wh: Tensor, rexp: Tensor) -> tuple[Tensor, Tensor]:
    """Steps 1-2 for one chunk ``xq (W, H, c, D)``: ``z`` and ``v``, both ``(heads W, H, c O)``."""
    width, height, images, dim = xq.shape
    heads, _, out_dim = wh.shape
    tokens = width * height * images
    z = torch.bmm(xq.view(1, tokens, dim).expand(heads, tokens, dim), wh)  # (h, (l,k,b), o)
    z = z.view(heads * width, height, images * out_dim)
    v = torch.bmm(rexp, z)  # ((h, l), i, (b, o))
    return z, v


def _sum_over_heads(dz: Tensor, wh: Tensor) -> Tensor:
    """``sum_h dz[h] W_h`` for ``dz (heads, T, O)`` and ``wh = W_h^T (heads, D, O)``: ``(T, D)``.

    The heads made adjacent to the output channels (one copy of ``dz``, in cache), then one GEMM
    with ``K = heads O``.
    """
    heads, tokens, out_dim = dz.shape
    flat = dz.transpose(0, 1).reshape(tokens, heads * out_dim)  # (T, (h, o))
    return torch.mm(flat, wh.transpose(1, 2).reshape(heads * out_dim, -1))


class ProjectedSeparableAttention(torch.autograd.Function):
    """``y = b_out + sum_h (R_h (x) C_h) x W_out^(h)``, project then mix (module docstring).

    Inputs: ``x (B, H, W, D)`` contiguous; ``row (heads, H, H)``; ``col (heads, W, W)``;
    ``weight (O, heads D)``; ``bias (O,)`` or ``None``; ``chunk`` (images per chunk).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, row: Tensor, col: Tensor, weight: Tensor,
                bias: Tensor | None, chunk: int) -> Tensor:
        batch, height, width, _ = x.shape
        heads, out_dim = row.shape[0], weight.shape[0]
        wh = _head_weights(weight, heads)
        rexp = _row_factors(row, width)
        ccat = col.permute(1, 0, 2).reshape(width, heads * width)  # (j, (h, l))
        y = x.new_empty(batch, height, width, out_dim)
        for s, e in chunk_bounds(batch, chunk):
            xq = x[s:e].permute(2, 1, 0, 3).contiguous()  # (l, k, b, d): x-sized copy
            _, v = _project_rows(xq, wh, rexp)
            yq = torch.mm(ccat, v.view(heads * width, -1))  # (j, (i, b, o)), projected
            projected = yq.view(width, height, e - s, out_dim).permute(2, 1, 0, 3)
            project_chunk(y[s:e], projected, None, bias)  # only b_out left to add
        ctx.save_for_backward(x, row, col, weight)
        ctx.chunk, ctx.has_bias = chunk, bias is not None
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, ...]:
        x, row, col, weight = ctx.saved_tensors
        need_x, need_row, need_col, need_w, need_b = ctx.needs_input_grad[:5]
        batch, height, width, dim = x.shape
        heads, out_dim = row.shape[0], weight.shape[0]
        acc = accumulation_dtype(x.dtype)
        grad_y = grad_y.contiguous().to(x.dtype)
        wh = _head_weights(weight, heads)
        rexp = _row_factors(row, width)
        ccat = col.permute(1, 0, 2).reshape(width, heads * width)

        def zeros(*shape: int) -> Tensor:
            return torch.zeros(shape, dtype=acc, device=x.device)

        grad_x = torch.empty_like(x) if need_x else None
        grad_wh = zeros(heads, dim, out_dim) if need_w else None
        grad_rexp = zeros(heads * width, height, height) if need_row else None
        grad_ccat = zeros(width, heads * width) if need_col else None
        for s, e in chunk_bounds(batch, ctx.chunk):
            b = e - s
            tokens = width * height * b
            xq = x[s:e].permute(2, 1, 0, 3).contiguous()  # (l, k, b, d)
            z, v = _project_rows(xq, wh, rexp)  # recomputed, in cache
            gq = grad_y[s:e].permute(2, 1, 0, 3).contiguous().view(width, -1)  # (j, (i,b,o))
            if grad_ccat is not None:  # dCcat = g v^T, K = H c O
                grad_ccat += (gq @ v.view(heads * width, -1).t()).to(acc)
            if not (need_x or need_row or need_w):
                continue
            dv = torch.mm(ccat.t(), gq).view(heads * width, height, -1)  # ((h,l), i, (b,o))
            if grad_rexp is not None:  # dR for every (h, l): dv z^T, K = c O
                grad_rexp += torch.bmm(dv, z.transpose(1, 2)).to(acc)
            if not (need_x or need_w):
                continue
            dz = torch.bmm(rexp.transpose(1, 2), dv).view(heads, tokens, out_dim)  # (h, T, o)
            if grad_wh is not None:  # dW_h^T = xq^T dz_h, K = T
                xt = xq.view(tokens, dim).t()
                grad_wh += torch.bmm(xt.expand(heads, dim, tokens), dz).to(acc)
            if grad_x is not None:  # dxq = sum_h dz_h W_h
                gxq = _sum_over_heads(dz, wh)
                grad_x[s:e].copy_(gxq.view(width, height, b, dim).permute(2, 1, 0, 3))

        grad_row = grad_col = grad_w = None
        if grad_rexp is not None:
            grad_row = grad_rexp.view(heads, width, height, height).sum(1).to(row.dtype)
        if grad_ccat is not None:
            grad_col = grad_ccat.view(width, heads, width).transpose(0, 1).to(col.dtype)
        if grad_wh is not None:
            grad_w = grad_wh.permute(2, 0, 1).reshape(out_dim, heads * dim).to(weight.dtype)
        grad_b = bias_grad(grad_y, acc, weight.dtype) if need_b and ctx.has_bias else None
        return grad_x, grad_row, grad_col, grad_w, grad_b, None


@torch.compiler.assume_constant_result
def _threads() -> int:
    """PyTorch's intra-op threads (at least 1); a constant to ``torch.compile`` (no graph break:
    the chunk size sets how the work is blocked, not the function computed)."""
    return max(1, torch.get_num_threads())


def projected_chunk(x: Tensor, heads: int, out_dim: int) -> int:
    """Images per chunk for ``x (B, H, W, D)``: the whole batch on a GPU; on a CPU
    ~:data:`CPU_CHUNK_BYTES` of ``z`` per thread (each thread works on its share of a product).
    """
    batch, height, width, _ = x.shape
    if x.device.type != "cpu":
        return max(batch, 1)
    per_image = height * width * heads * out_dim * x.element_size()
    budget = CPU_CHUNK_BYTES * _threads()
    return max(1, min(batch, budget // max(per_image, 1)))


def projected_separable_attention(x: Tensor, row: Tensor, col: Tensor, weight: Tensor,
                                  bias: Tensor | None = None, *,
                                  chunk: int | None = None) -> Tensor:
    """:class:`ProjectedSeparableAttention`; ``chunk`` defaults to :func:`projected_chunk`.

    ``x (B, H, W, D)``, batch-shared ``row (heads, H, H)`` and ``col (heads, W, W)``, ``weight
    (O, heads D)``, ``bias (O,)`` or ``None``; returns ``(B, H, W, O)``.
    """
    heads, out_dim = row.shape[0], weight.shape[0]
    chunk = projected_chunk(x, heads, out_dim) if chunk is None else max(1, int(chunk))
    return ProjectedSeparableAttention.apply(x.contiguous(), row, col, weight, bias, chunk)
