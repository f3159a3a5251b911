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

1. columns: ``a[k, b, (j, h), :] = sum_l Ccol[(j, h), l] x[b, k, l, :]`` -- one batched product
   whose left factor ``Ccol`` stacks the 9 heads' ``C_h`` (M = 9 W rows, shared by every
   ``(k, b)``; the chunk of ``x`` is first transposed to rows-first, a small copy);
2. rows: ``m[b, i, (j, h), :] = sum_k R_h[i, k] a[k, b, (j, h), :]`` -- one batched product over
   all ``(b, j, h)`` reading a strided view of ``a`` into a contiguous block (MKL's batched
   GEMM), copied once into ``m``'s token-major layout (a chunk-sized copy, in cache);
3. projection: ``y = m (B H W, heads D) @ W_out^T + b_out`` -- ``m`` is already laid out as the
   reference's concatenation of heads, so this is one GEMM of the reference's size.

The backward pass saves only ``x`` and the two small probability matrices: because the row
mixing, the column mixing and ``W_out`` act on different axes they commute, and every gradient
is a contraction of something cheap to recompute from ``x`` with something computed from the
upstream gradient ``g``:

* ``P = g W_out`` (the gradient of ``m``; one GEMM), ``dW_out = g^T m`` (one GEMM; ``m``
  recomputed by steps 1-2, which cost ~1/20 of a GEMM);
* ``dR_h[i, k] = sum P[i, (b, j, h), d] a[k, (b, j, h), d]`` (one batched product, ``P``
  computed from the rows-first gradient so that ``(b, j, h)`` is one batch axis); ``da = R^T P``,
  written in the layout ``(b, (j, h), k, d)`` that a batched product produces without a copy;
* ``dx[b, :, l] = sum_{(j, h)} Ccol[(j, h), l] da[b, (j, h), :]`` (the head sum fused into one
  product with K = 9 W, per image), ``dCcol = sum_b da[b] x[b]^T`` (K = H D).

Images are processed in chunks (:func:`default_chunk`): on a CPU the per-chunk intermediates
stay in cache and reuse allocator blocks instead of faulting in fresh pages; on a GPU one chunk
holds the whole batch.

Attention dropout acts on the joint probabilities ``R[i,k] C[j,l]`` and does not factorise. The
layers therefore use this path for dropout only in the opt-in ``attn_dropout_mode="factors"``,
which drops entries of each image's ``R`` and ``C`` instead (see
:func:`factor_dropout`); probability dropout (the paper's) takes the batch-shared dense path.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from attnconv.layers.precision import accumulation_dtype
from attnconv.layers.projection import bias_grad, chunk_bounds, project_chunk
from attnconv.layers.separable_projected import MAX_DIM, projected_separable_attention

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


def _per_image(t: Tensor, shared: bool, start: int, stop: int) -> Tensor:
    """Rows ``start:stop`` of a per-image factor, or the shared factor itself."""
    return t if shared else t[start:stop]


def _row_factors(row: Tensor, width: int, images: int) -> Tensor:
    """``Rexp[(b, j, h)] = R[(b,) h]``: one ``(H, H)`` matrix per ``(image, column, head)``.

    ``row`` is ``(heads, H, H)`` (shared) or ``(images, heads, H, H)``; returns
    ``(images W heads, H, H)`` (small: ``images W heads H^2`` numbers).
    """
    heads, height = row.shape[-3], row.shape[-1]
    lead = row if row.dim() == 4 else row.expand(images, heads, height, height)
    expanded = lead[:, None].expand(images, width, heads, height, height)
    return expanded.reshape(images * width * heads, height, height)


def _column_factors(ccol: Tensor, height: int, images: int) -> Tensor:
    """``Ccol`` for every ``(k, b)`` batch of step 1: ``(H b, W heads, W)`` (a view if shared)."""
    rows, width = ccol.shape[-2:]
    if ccol.dim() == 2:
        return ccol.expand(height * images, rows, width)  # stride-0 batch: no copy
    return ccol[None].expand(height, images, rows, width).reshape(height * images, rows, width)


def _mix_columns(ccol: Tensor, xk: Tensor) -> Tensor:
    """Step 1: ``a[k, b, (j,h), :] = sum_l Ccol[(j,h), l] x[b, k, l, :]``.

    ``xk`` is the chunk with rows first, ``(H, b, W, D)``; returns ``(H, b, W heads, D)``.
    """
    height, b, width, dim = xk.shape
    left = _column_factors(ccol, height, b)  # (H b, W heads, W)
    a = torch.bmm(left, xk.view(height * b, width, dim))  # (H b, W heads, D)
    return a.view(height, b, -1, dim)


def _mix_rows(rexp: Tensor, a: Tensor) -> Tensor:
    """Step 2: ``m[b, i, (j,h), :] = sum_k R_h[i, k] a[k, b, (j,h), :]`` -> ``(b, H, W h, D)``.

    One batched product over all ``(b, j, h)`` (``a`` read through a strided view, output
    contiguous so that MKL's batched GEMM runs), then one copy to the token-major layout the
    output projection reads.
    """
    height, b, rows, dim = a.shape
    scratch = torch.bmm(rexp, a.view(height, b * rows, dim).transpose(0, 1))  # ((b,j,h), i, D)
    return scratch.view(b, rows, height, dim).transpose(1, 2).contiguous()  # (b, H, W h, D)


class SeparableAttention(torch.autograd.Function):
    """``y = b_out + sum_h (R_h (x) C_h) x W_out^(h)`` with identity values, in chunks.

    Inputs: ``x (B, H, W, D)``; ``row (heads, H, H)`` or ``(B, heads, H, H)``; ``col (heads, W,
    W)`` or ``(B, heads, W, W)``; ``weight (O, heads D)`` (``nn.Linear`` layout, columns ordered
    ``(h, d)``) or ``None`` (return the mixed heads); ``bias (O,)`` or ``None``; ``chunk``
    (images per chunk). All floating inputs share one dtype. Returns ``(B, H, W, O)`` (or
    ``(B, H, W, heads D)``). See the module docstring for the algorithm.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, row: Tensor, col: Tensor, weight: Tensor | None,
                bias: Tensor | None, chunk: int) -> Tensor:
        batch, height, width, dim = x.shape
        heads = row.shape[-3]
        shared = row.dim() == 3
        ccol = _stack_columns(col)  # (W heads, W) or (B, W heads, W)
        out_dim = heads * dim if weight is None else weight.shape[0]
        ctx.save_for_backward(x, row, col, weight)  # backward recomputes the rest from these
        ctx.chunk = chunk
        y = x.new_empty(batch, height, width, out_dim)
        for s, e in chunk_bounds(batch, chunk):
            xk = x[s:e].transpose(0, 1).contiguous()  # (H, b, W, D): a small copy
            a = _mix_columns(_per_image(ccol, shared, s, e), xk)  # (H, b, W heads, D)
            rexp = _row_factors(_per_image(row, shared, s, e), width, e - s)  # (b W h, H, H)
            m = _mix_rows(rexp, a)  # (b, H, W heads, D) = tokens x (h, d)
            if weight is None:  # the mixed heads themselves, (b, H, W, heads D)
                project_chunk(y[s:e], m.view(y[s:e].shape), None, None)
            else:
                project_chunk(y[s:e], m, weight, bias)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, ...]:
        x, row, col, weight = ctx.saved_tensors
        need_x, need_row, need_col, need_w, need_b, _ = ctx.needs_input_grad
        batch, height, width, dim = x.shape
        heads = row.shape[-3]
        rows = width * heads
        out_dim = heads * dim if weight is None else weight.shape[0]
        shared, chunk = row.dim() == 3, ctx.chunk
        acc = accumulation_dtype(x.dtype)
        grad_y = grad_y.contiguous().to(x.dtype)
        ccol = _stack_columns(col)

        def zeros(shape: torch.Size) -> Tensor:
            return torch.zeros(shape, dtype=acc, device=x.device)

        grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device) if need_x else None
        grad_w = zeros(weight.shape) if need_w and weight is not None else None
        grad_row = zeros(row.shape) if need_row else None
        grad_ccol = zeros(ccol.shape) if need_col else None
        for s, e in chunk_bounds(batch, chunk):
            b = e - s
            xs = x[s:e]
            xk = xs.transpose(0, 1).contiguous()  # (H, b, W, D)
            c_s = _per_image(ccol, shared, s, e)
            rexp = _row_factors(_per_image(row, shared, s, e), width, b)  # (b W h, H, H)
            a = _mix_columns(c_s, xk)  # (H, b, (j,h), D), recomputed
            if grad_w is not None:  # dW_out = g^T m, with m = rows(columns(x)) recomputed
                m = _mix_rows(rexp, a)  # (b, H, W heads, D)
                grad_w += (grad_y[s:e].view(-1, out_dim).t() @ m.view(-1, heads * dim)).to(acc)
                del m
            if not (need_x or need_row or need_col):
                continue
            # dm = g W_out (or g itself when the layer only mixes), rows first: (H, b, W h, D)
            g_t = grad_y[s:e].transpose(0, 1).contiguous().view(-1, out_dim)  # (H b W, O)
            p = (g_t if weight is None else g_t @ weight).view(height, b * rows, dim)
            p = p.transpose(0, 1)  # ((b,j,h), i, D), strided
            if need_row:  # dR[(b,j,h), i, k] = sum_d P[(b,j,h), i, d] a[k, (b,j,h), d]
                prod = torch.bmm(p, a.view(height, b * rows, dim).permute(1, 2, 0))
                prod = prod.view(b, width, heads, height, height).sum(1)  # (b, heads, H, H)
                if shared:
                    grad_row += prod.sum(0).to(acc)
                else:
                    grad_row[s:e] += prod.to(acc)
            if need_x or need_col:
                da = torch.bmm(rexp.transpose(1, 2), p)  # R^T P: ((b,j,h), k, D) contiguous
                da_flat = da.view(b, rows, height * dim)  # (b, (j,h), (k, d))
                if need_x:  # dx[b,k,l] = sum_{(j,h)} Ccol[(j,h), l] da[b,(j,h),k]: K = W heads
                    left = (c_s.t().expand(b, width, rows) if shared
                            else c_s.transpose(1, 2))  # (b, W(l), W heads)
                    gx_t = torch.bmm(left, da_flat)  # (b, l, (k, d))
                    grad_x[s:e].copy_(gx_t.view(b, width, height, dim).transpose(1, 2))
                if need_col:  # dCcol[(j,h), l] = sum_{b,k,d} da[b,(j,h),k,d] x[b,k,l,d]
                    x_t = xs.transpose(1, 2).reshape(b, width, height * dim)  # (b, l, (k, d))
                    prod = torch.bmm(da_flat, x_t.transpose(1, 2))  # (b, (j,h), l)
                    if shared:
                        grad_ccol += prod.sum(0).to(acc)
                    else:
                        grad_ccol[s:e] += prod.to(acc)

        grad_col = None
        if grad_ccol is not None:
            lead = ccol.shape[:-2]
            grad_col = grad_ccol.view(*lead, width, heads, width).transpose(-3, -2).to(col.dtype)
        grad_b = bias_grad(grad_y, acc, weight.dtype) if need_b and weight is not None else None
        return (grad_x, None if grad_row is None else grad_row.to(row.dtype), grad_col,
                None if grad_w is None else grad_w.to(weight.dtype), grad_b, None)


KERNELS = ("auto", "mix-project", "project-mix")
"""``kernel`` of :func:`separable_attention`: "mix, then project" (:class:`SeparableAttention`),
"project, then mix" (:mod:`attnconv.layers.separable_projected`), or the faster one here."""


_FORCED_KERNEL: str | None = None


@contextlib.contextmanager
def separable_kernel(kernel: str) -> Iterator[None]:
    """Make ``kernel="auto"`` run ``kernel`` where it applies (benchmarks, debugging)."""
    global _FORCED_KERNEL
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
    previous, _FORCED_KERNEL = _FORCED_KERNEL, None if kernel == "auto" else kernel
    try:
        yield
    finally:
        _FORCED_KERNEL = previous


def choose_kernel(x: Tensor, row: Tensor, weight: Tensor | None) -> str:
    """The kernel ``kernel="auto"`` runs: "project-mix" on a CPU for narrow tokens, else
    "mix-project".

    "project-mix" needs batch-shared factors and the fused projection; it was measured faster
    on a CPU for ``D <= MAX_DIM`` (1.5x at the demo model's ``D = 32``, ~1.15x at 64 and 128)
    and slower at the paper's ``D = 400`` (docs/performance.md). Inside
    :func:`separable_kernel` the forced kernel runs wherever it applies.
    """
    if weight is None or row.dim() != 3:
        return "mix-project"
    if _FORCED_KERNEL is not None:
        return _FORCED_KERNEL
    if x.device.type != "cpu":
        return "mix-project"
    return "project-mix" if x.shape[-1] <= MAX_DIM else "mix-project"


def separable_attention(x: Tensor, row: Tensor, col: Tensor, weight: Tensor | None = None,
                        bias: Tensor | None = None, *, chunk: int | None = None,
                        kernel: str = "auto") -> Tensor:
    """Positional-only separable attention with identity values, and the output projection.

    ``y[b, i, j] = bias + sum_h sum_{k,l} R_h[i,k] C_h[j,l] x[b,k,l] W^(h)`` where ``W^(h)`` is
    block ``h`` of ``weight (O, heads D)``. ``row``/``col`` are shared ``(heads, ., .)`` or per
    image ``(B, heads, ., .)``. With ``weight=None`` return the mixed heads
    ``m[b, i, j, (h, d)] = sum_{k,l} R_h[i,k] C_h[j,l] x[b,k,l,d]`` instead (the input of the
    output projection). Exact; ``kernel`` is one of :data:`KERNELS` ("auto":
    :func:`choose_kernel`); see :class:`SeparableAttention` and
    :class:`~attnconv.layers.separable_projected.ProjectedSeparableAttention`.

    Returns:
        ``(B, H, W, O)``, or ``(B, H, W, heads D)`` when ``weight`` is ``None``.
    """
    heads = row.shape[-3]
    if weight is not None and weight.shape[1] != heads * x.shape[-1]:
        raise ValueError(f"weight {tuple(weight.shape)} does not match {heads} heads of width "
                         f"{x.shape[-1]}")
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
    if kernel == "auto":
        kernel = choose_kernel(x, row, weight)
    if kernel == "project-mix":
        if weight is None or row.dim() != 3 or col.dim() != 3:
            raise ValueError('kernel="project-mix" needs batch-shared row and column factors '
                             'and the output projection weight; use kernel="mix-project"')
        return projected_separable_attention(x, row, col, weight, bias, chunk=chunk)
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
