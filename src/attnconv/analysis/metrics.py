"""How local, how peaked, how convolution-like each attention head is (PAPER section 5).

Every metric takes attention maps ``A`` of shape ``(B, heads, H, W, H, W)`` (query row, query
col, key row, key col; each map sums to 1 over the keys), as :func:`record_attention` returns
them, and gives one value per head, averaged over the ``B`` images and over the queries:

* :func:`mean_distance` -- ViT's "attention distance": ``sum_k A[q, k] ||k - q||`` averaged over
  queries, in *tokens* (multiply by :func:`~attnconv.analysis.record.token_stride`, the
  space-to-depth factor ``r``, for pixels of the input image).
* :func:`attention_entropy` -- ``-sum_k A[q, k] log A[q, k]`` in nats; ``0`` for a one-hot
  head, ``log(H W)`` for a uniform one.
* :func:`conv_likeness` -- the mass on the single most-attended relative offset: for each
  offset ``delta``, ``m(delta)`` is the mean of ``A[q, q + delta]`` over the images and over the
  queries ``q`` whose key ``q + delta`` lies inside the grid; the head's value is the largest
  ``m(delta)`` and its offset the maximiser. ``1.0`` exactly when every (interior) query puts all
  its attention on ``q + delta`` for one fixed ``delta``: a convolution tap (Lemma 1).

``margin`` restricts every average to the queries at least ``margin`` tokens from each border
(queries near the border see a cut-off neighbourhood, renormalised by the softmax). ``0`` (the
default) keeps all queries, ViT's measure. :func:`compute_locality` puts it all together per
layer and head, with the Gaussian centre and width of quadratic heads.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from attnconv.analysis.record import (
    attention_layers,
    eval_mode,
    positional_attention,
    record_attention,
    token_grid,
    token_stride,
)
from attnconv.errors import ShapeError
from attnconv.layers import SelfAttention2d
from attnconv.layers.grid import relative_grid


def _check_maps(attn: Tensor) -> tuple[int, int]:
    if not isinstance(attn, Tensor) or attn.dim() != 6:
        shape = tuple(attn.shape) if isinstance(attn, Tensor) else type(attn).__name__
        raise ShapeError(f"attention maps must be (B, heads, H, W, H, W), got {shape}")
    h, w = attn.shape[-2:]
    if tuple(attn.shape[2:4]) != (h, w):
        raise ShapeError(f"attention maps must be (B, heads, H, W, H, W) with the same query and "
                         f"key grid, got {tuple(attn.shape)}")
    return int(h), int(w)


def _distinct(attn: Tensor) -> Tensor:
    """Drop the copies of an ``expand``-ed (positional-only) batch: ``(B or 1, heads, ...)``."""
    return attn[:1] if attn.shape[0] > 1 and attn.stride(0) == 0 else attn


def _interior(height: int, width: int, margin: int) -> tuple[slice, slice]:
    """Row and column slices of the queries at least ``margin`` tokens from every border."""
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if height - 2 * margin < 1 or width - 2 * margin < 1:
        raise ValueError(f"margin={margin} leaves no query on a {height}x{width} grid; use at "
                         f"most {(min(height, width) - 1) // 2}")
    return slice(margin, height - margin), slice(margin, width - margin)


def mean_distance(attn: Tensor, *, margin: int = 0) -> Tensor:
    """Mean attention distance per head in tokens, ``(heads,)``.

    ``mean over images and queries q of sum_k A[q, k] ||k - q||`` (ViT's measure), with
    ``||.||`` the Euclidean distance between token positions.
    """
    h, w = _check_maps(attn)
    rows, cols = _interior(h, w, margin)
    a = _distinct(attn).mean(dim=0, dtype=torch.float64)  # (heads, H, W, H, W): linear in A
    d_row, d_col = relative_grid(h, w, device=a.device, dtype=a.dtype)
    dist = (d_row**2 + d_col**2).sqrt()  # (H, W, H, W) distance of key to query
    per_query = (a * dist).sum(dim=(-2, -1))  # (heads, H, W)
    return per_query[:, rows, cols].mean(dim=(-2, -1)).to(attn.dtype)  # (heads,)


def attention_entropy(attn: Tensor, *, margin: int = 0) -> Tensor:
    """Entropy of the attention of each query in nats, averaged per head, ``(heads,)``.

    ``-sum_k A[q, k] log A[q, k]`` (``0 log 0 = 0``): 0 for one-hot attention, ``log(H W)``
    for uniform attention over the grid.
    """
    h, w = _check_maps(attn)
    rows, cols = _interior(h, w, margin)
    a = _distinct(attn)[:, :, rows, cols]  # (B, heads, Hi, Wi, H, W)
    per_query = torch.special.entr(a).sum(dim=(-2, -1), dtype=torch.float64)  # (B, heads, Hi, Wi)
    return per_query.mean(dim=(0, 2, 3)).to(attn.dtype)  # (heads,)


def offset_mass(attn: Tensor, *, margin: int = 0) -> Tensor:
    """``m(delta)``: mean attention on each relative offset, ``(heads, 2H - 1, 2W - 1)``.

    Entry ``[h, delta_row + H - 1, delta_col + W - 1]`` is the mean of ``A_h[q, q + delta]``
    over the images and over the queries ``q`` (at least ``margin`` from the border) whose key
    ``q + delta`` lies inside the grid; NaN where no query has that offset.
    """
    h, w = _check_maps(attn)
    rows, cols = _interior(h, w, margin)
    a = _distinct(attn).mean(dim=0, dtype=torch.float64)[:, rows, cols]  # (heads, Hi, Wi, H, W)
    heads = a.shape[0]
    q_row = torch.arange(h, device=a.device)[rows].view(-1, 1, 1, 1)  # (Hi, 1, 1, 1)
    q_col = torch.arange(w, device=a.device)[cols].view(1, -1, 1, 1)  # (1, Wi, 1, 1)
    k_row = torch.arange(h, device=a.device).view(1, 1, h, 1)
    k_col = torch.arange(w, device=a.device).view(1, 1, 1, w)
    # Index of the offset k - q in the flattened (2H - 1, 2W - 1) table of offsets.
    index = (k_row - q_row + h - 1) * (2 * w - 1) + (k_col - q_col + w - 1)  # (Hi, Wi, H, W)
    index = index.reshape(1, -1)
    sums = a.new_zeros(heads, (2 * h - 1) * (2 * w - 1))
    sums.scatter_add_(1, index.expand(heads, -1), a.reshape(heads, -1))
    counts = a.new_zeros(1, sums.shape[1]).scatter_add_(
        1, index, torch.ones_like(index, dtype=a.dtype))  # queries having each offset
    mass = (sums / counts).view(heads, 2 * h - 1, 2 * w - 1)  # NaN where counts == 0
    return mass.to(attn.dtype)


def most_attended_offset(mass: Tensor) -> tuple[Tensor, Tensor]:
    """Convolution-likeness and its offset from :func:`offset_mass`'s table.

    The candidates are the offsets with ``|delta_row| <= (H - 1) // 2`` and
    ``|delta_col| <= (W - 1) // 2``: for each of them at least half of the query rows and half
    of the query columns have their key ``q + delta`` inside the grid, so the mass a cut-off
    border query piles on the edge cannot win on a handful of queries.

    Returns:
        ``(likeness (heads,), offsets (heads, 2) int64 as (row, col))``.
    """
    heads, rows2, cols2 = mass.shape
    h, w = (rows2 + 1) // 2, (cols2 + 1) // 2
    r_row, r_col = (h - 1) // 2, (w - 1) // 2
    window = mass[:, h - 1 - r_row:h + r_row, w - 1 - r_col:w + r_col]  # candidate offsets
    flat = window.reshape(heads, -1).nan_to_num(nan=-1.0)
    likeness, best = flat.max(dim=1)  # (heads,)
    width = 2 * r_col + 1
    offsets = torch.stack([best // width - r_row, best % width - r_col], dim=1)  # (heads, 2)
    return likeness, offsets


def conv_likeness(attn: Tensor, *, margin: int = 0) -> tuple[Tensor, Tensor]:
    """Mass on the single most-attended relative offset per head, and that offset.

    See :func:`offset_mass` and :func:`most_attended_offset`. ``1.0`` for a head of a converted
    convolution (every query puts all its attention on ``q + Delta_h``).

    Returns:
        ``(likeness (heads,), offsets (heads, 2) int64 as (row, col) in tokens)``.
    """
    return most_attended_offset(offset_mass(attn, margin=margin))


def gaussian_widths(layer: SelfAttention2d) -> list[dict[str, float | None]]:
    """Centre and width of each head of a quadratic layer, one dict per head.

    Keys: ``center_row``, ``center_col`` (tokens), ``alpha`` (isotropic heads, else None),
    ``inv_cov_eig_min``, ``inv_cov_eig_max`` (eigenvalues of ``Sigma^-1``; ``2 alpha`` twice
    for an isotropic head; a near-zero eigenvalue marks a degenerate head, infinitely wide
    along that axis) and ``sigma_max`` (standard deviation along the widest axis,
    ``1 / sqrt(inv_cov_eig_min)``, None when degenerate).
    """
    g = layer.gaussian_parameters()
    eig = torch.linalg.eigvalsh(g.inv_covariance.double())  # (heads, 2) ascending
    rows = []
    for head in range(g.centers.shape[0]):
        low, high = float(eig[head, 0]), float(eig[head, 1])
        rows.append({
            "center_row": float(g.centers[head, 0]), "center_col": float(g.centers[head, 1]),
            "alpha": None if g.alpha is None else float(g.alpha[head]),
            "inv_cov_eig_min": low, "inv_cov_eig_max": high,
            "sigma_max": 1.0 / math.sqrt(low) if low > 1e-12 else None,
        })
    return rows


_EMPTY_GAUSSIAN: dict[str, Any] = {"center_row": None, "center_col": None, "alpha": None,
                                   "inv_cov_eig_min": None, "inv_cov_eig_max": None,
                                   "sigma_max": None}


class _LayerSums:
    """Running image-weighted sums of one layer's per-head metrics over batches."""

    def __init__(self) -> None:
        self.images = 0
        self.distance: Tensor | None = None
        self.entropy: Tensor | None = None
        self.mass: Tensor | None = None
        self.grid = (0, 0)

    def add(self, attn: Tensor, margin: int, weight: int) -> None:
        self.grid = (int(attn.shape[-2]), int(attn.shape[-1]))
        parts = (mean_distance(attn, margin=margin).double() * weight,
                 attention_entropy(attn, margin=margin).double() * weight,
                 offset_mass(attn, margin=margin).double() * weight)
        if self.distance is None:
            self.distance, self.entropy, self.mass = parts
        else:
            assert self.entropy is not None and self.mass is not None
            if parts[2].shape != self.mass.shape:
                raise ShapeError("all images must have the same size")
            self.distance, self.entropy, self.mass = (
                self.distance + parts[0], self.entropy + parts[1], self.mass + parts[2])
        self.images += weight


def compute_locality(
    model: nn.Module,
    images: Tensor | None = None,
    *,
    batch_size: int = 100,
    margin: int = 0,
    grid: tuple[int, int] | None = None,
) -> list[dict[str, Any]]:
    """Locality metrics of every head of every attention layer, one row per (layer, head).

    Args:
        model: any module built from :class:`SelfAttention2d` layers; it runs in eval mode
            here (each module's mode is restored afterwards).
        images: normalised model inputs ``(N, C, H, W)``. Needed for content attention, whose
            maps are averaged over these images, each layer on its actual input. Without images
            every layer must be positional-only: its own positional attention is used on the
            token grid ``grid`` (default: the model's, ``model.config.grid_size``).
        batch_size: images per forward pass.
        margin: ignore queries closer than this to the border (see the module docstring).
        grid: token grid ``(H, W)`` for positional-only layers when ``images`` is None.

    Returns:
        Rows with ``layer`` (index, model order), ``name`` (module name), ``head``,
        ``encoding``, ``content``, ``grid_rows``, ``grid_cols``, ``images`` (how many the row
        averages; 0 for positional-only attention without images), ``mean_distance`` (tokens),
        ``mean_distance_px`` (input pixels: tokens times the space-to-depth factor),
        ``entropy`` and ``entropy_uniform`` (nats; the latter is ``log(H W)``, a uniform head),
        ``conv_likeness``, ``offset_row``, ``offset_col`` (the most-attended offset, tokens),
        and for quadratic heads ``center_row``, ``center_col``, ``alpha``, ``inv_cov_eig_min``,
        ``inv_cov_eig_max``, ``sigma_max`` (None otherwise; see :func:`gaussian_widths`).
    """
    layers = attention_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} holds no SelfAttention2d layer")
    sums = [_LayerSums() for _ in layers]
    if images is None:
        content = [name or "(root)" for name, layer in layers if not layer.positional_only]
        if content:
            raise ValueError(f"layers {', '.join(content)} use content attention: their maps "
                             f"depend on the image; pass images (attnconv locality --images N)")
        grid = grid or token_grid(model)
        if grid is None:
            raise ValueError(f"pass grid=(H, W): the token grid of {type(model).__name__} is "
                             f"unknown without images")
        for (_, layer), acc in zip(layers, sums, strict=True):
            acc.add(positional_attention(layer, grid)[None], margin, 1)
            acc.images = 0
    else:
        if len(images) == 0:
            raise ValueError("images is empty; pass at least one image or images=None")
        with eval_mode(model):
            for start in range(0, len(images), batch_size):
                batch = images[start:start + batch_size]
                maps = record_attention(model, batch, batch_size=len(batch))
                for attn, acc in zip(maps, sums, strict=True):
                    acc.add(attn, margin, len(batch))
    stride = token_stride(model)
    rows: list[dict[str, Any]] = []
    for index, ((name, layer), acc) in enumerate(zip(layers, sums, strict=True)):
        assert acc.distance is not None and acc.entropy is not None and acc.mass is not None
        n = max(acc.images, 1)
        likeness, offsets = most_attended_offset(acc.mass / n)
        quadratic = layer.encoding_name.startswith("quadratic")
        gaussians = gaussian_widths(layer) if quadratic else [_EMPTY_GAUSSIAN] * layer.heads
        for head in range(layer.heads):
            distance = float(acc.distance[head]) / n
            rows.append({
                "layer": index, "name": name, "head": head, "encoding": layer.encoding_name,
                "content": layer.content, "grid_rows": acc.grid[0], "grid_cols": acc.grid[1],
                "images": acc.images, "mean_distance": distance,
                "mean_distance_px": distance * stride,
                "entropy": float(acc.entropy[head]) / n,
                "entropy_uniform": math.log(acc.grid[0] * acc.grid[1]),
                "conv_likeness": float(likeness[head]),
                "offset_row": int(offsets[head, 0]), "offset_col": int(offsets[head, 1]),
                **gaussians[head],
            })
    return rows
