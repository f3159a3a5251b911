"""Content attention with a relative positional term through one fused attention kernel.

The content logits with a relative positional term (PAPER section 3; Ramachandran et al. 2019)

    A[(i, j), (k, l)] = ( q_ij . k_kl  +  q_row_ij . r_row[k - i]  +  q_col_ij . r_col[l - j] )
                        / sqrt(d)  +  G[(i, j), (k, l)]

(``G`` an optional batch-shared positional term, e.g. the Gaussian of the quadratic encoding)
are a sum of a dot product and terms that depend on the key's *row* or *column* only. Such
terms are dot products too, with one-hot key features::

    A[q, (k, l)] = [q, Row[q, :], Col[q, :], c] . [k_kl, e_k, e_l, f(k, l)] / sqrt(d)

where ``Row[q, k'] = q_row . r_row[k' - i] + sqrt(d) G_row[q, k']`` (``H`` numbers per query),
``Col`` likewise (``W`` numbers) and ``c f(k, l)`` an optional rank-one cross term (the
``delta_1 delta_2`` term of a full-covariance Gaussian). So the attention is *exactly* plain
scaled-dot-product attention on queries and keys augmented by ``H + W (+ 1)`` features, and
``torch.nn.functional.scaled_dot_product_attention`` (a fused kernel: flash attention on CPU and
GPU) computes it without ever materialising an ``(HW) x (HW)`` logit tensor, in the forward or
the backward pass. No ``(HW) x (HW) x d`` tensor exists either: the relative scores are computed
for the ``2H - 1`` row and ``2W - 1`` column offsets and expanded by indexing ("relative
logits", :func:`attnconv.layers.learned.relative_logits`).

The fused kernels need equal query and value widths; the narrower side is zero-padded (exact).
With attention dropout the CPU kernel falls back to PyTorch's reference math kernel (still exact,
still per-image masks).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def key_features(height: int, width: int, cross: bool, *, dtype: torch.dtype,
                 device: torch.device) -> Tensor:
    """``[e_k, e_l, f(k, l)]`` of every key ``(k, l)``: ``(H W, H + W (+ 1))``.

    ``f(k, l) = (k - (H-1)/2) (l - (W-1)/2)`` (centred to keep it small) when ``cross``.
    """
    rows = torch.eye(height, dtype=dtype, device=device)[:, None, :].expand(height, width, height)
    cols = torch.eye(width, dtype=dtype, device=device)[None, :, :].expand(height, width, width)
    parts = [rows, cols]
    if cross:
        k = torch.arange(height, dtype=dtype, device=device) - (height - 1) / 2
        l = torch.arange(width, dtype=dtype, device=device) - (width - 1) / 2
        parts.append((k[:, None] * l[None, :])[..., None])
    return torch.cat(parts, dim=-1).reshape(height * width, -1)


def content_attention(
    query: Tensor,
    key: Tensor,
    values: Tensor,
    row: Tensor | None,
    col: Tensor | None,
    cross: Tensor | None,
    *,
    scale: float,
    dropout: float = 0.0,
) -> Tensor:
    """Softmax attention with factorised positional logits through ``scaled_dot_product_attention``.

    Args:
        query, key: ``(B, heads, N, d)`` with ``N = H W`` (any strides).
        values: ``(B, heads, N, Dv)`` or ``(B, 1, N, Dv)`` (shared by the heads).
        row: ``(B or 1, heads, H, W, H)`` score of each query for each key *row*, in the units
            of ``q . k`` (the kernel multiplies everything by ``scale``), or ``None``.
        col: ``(B or 1, heads, H, W, W)`` score for each key *column*, or ``None``.
        cross: ``(heads,)`` coefficient ``c_h`` of the key feature ``f(k, l)``, or ``None``.
        scale: the factor of all the logits (``1 / sqrt(d)``): passed to the kernel, so that
            the queries are not rescaled in memory.
        dropout: attention dropout probability (0 outside training).

    Returns:
        ``(B, heads, N, Dv)``: ``softmax(scale (q.k + row[k] + col[l] + c f(k,l))) @ v`` per
        head.
    """
    batch, heads, n, _ = query.shape
    dv = values.shape[-1]
    q_parts, k_parts = [query], [key]
    if row is not None and col is not None:
        height, width = row.shape[-3], row.shape[-2]
        lead = (batch, heads, n)
        q_parts += [row.expand(batch, heads, height, width, height).reshape(*lead, height),
                    col.expand(batch, heads, height, width, width).reshape(*lead, width)]
        if cross is not None:
            q_parts.append(cross.to(query.dtype).view(1, heads, 1, 1).expand(*lead, 1))
        feats = key_features(height, width, cross is not None, dtype=query.dtype,
                             device=query.device)  # (N, H + W (+1))
        k_parts.append(feats.expand(batch, heads, n, feats.shape[-1]))
    width_qk = sum(p.shape[-1] for p in q_parts)
    # The fused kernels want one width for queries, keys and values: pad with zeros (exact).
    if width_qk < dv:
        pad = query.new_zeros(batch, heads, n, dv - width_qk)
        q_parts.append(pad)
        k_parts.append(pad)
    q_aug = torch.cat(q_parts, dim=-1)  # (B, heads, N, E)
    k_aug = torch.cat(k_parts, dim=-1)  # (B, heads, N, E)
    if width_qk > dv:
        values = F.pad(values, (0, width_qk - dv))  # (B, heads or 1, N, E)
    values = values.expand(batch, heads, n, values.shape[-1])
    out = F.scaled_dot_product_attention(q_aug, k_aug, values, dropout_p=dropout, scale=scale)
    return out[..., :dv]  # (B, heads, N, Dv)
