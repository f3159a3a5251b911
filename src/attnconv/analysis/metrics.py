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

Gaussian (quadratic) heads also get :func:`grid_coverage` from their centres alone: how many
of the 8 neighbours of a 3x3 window have a head centre within 0.5 tokens, next to the number
of distinct centres (paper section 4.2, figures 3-4).

``margin`` restricts every average to the queries at least ``margin`` tokens from each border
(queries near the border see a cut-off neighbourhood, renormalised by the softmax). ``0`` (the
default) keeps all queries, ViT's measure. :func:`compute_locality` puts it all together per
layer and head, with the Gaussian centre and width of quadratic heads.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
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


# --------------------------------------------------------------------------------------------
# Grid coverage of Gaussian heads (paper section 4.2, figs. 3-4; Lemma 1 / Theorem 1)
# --------------------------------------------------------------------------------------------
#: The 8 neighbours of the query in a 3x3 window, ``(row, col)`` in tokens, row-major.
NEIGHBOUR_OFFSETS: tuple[tuple[int, int], ...] = (
    (-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
#: A head covers an offset when its centre is closer than this (tokens); also the distance
#: under which two centres count as one (see :func:`grid_coverage`).
COVER_RADIUS = 0.5


@dataclass(frozen=True)
class GridCoverage:
    """How well the Gaussian heads of one layer tile the 3x3 window around the query.

    Attributes:
        heads: number of heads (centres) in the layer.
        covered: the neighbour offsets of :data:`NEIGHBOUR_OFFSETS` with a head centre closer
            than the radius (row-major order).
        distinct_centres: number of groups of centres, two centres closer than the radius
            being in the same group (connected components, see :func:`grid_coverage`).
        query_covered: a head centre is closer than the radius to the query itself ``(0, 0)``.
    """

    heads: int
    covered: tuple[tuple[int, int], ...]
    distinct_centres: int
    query_covered: bool

    @property
    def neighbours_covered(self) -> int:
        """How many of the 8 neighbour offsets are covered (0 to 8)."""
        return len(self.covered)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (``covered`` as ``[row, col]`` lists)."""
        return {"heads": self.heads, "neighbours_covered": self.neighbours_covered,
                "covered": [list(o) for o in self.covered],
                "distinct_centres": self.distinct_centres, "query_covered": self.query_covered}


def _components(close: Tensor) -> int:
    """Connected components of the graph whose adjacency matrix is ``close`` (n, n) bool."""
    n = close.shape[0]
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in close.nonzero().tolist():
        parent[root(i)] = root(j)
    return len({root(i) for i in range(n)})


def grid_coverage(centers: Tensor | Sequence[Sequence[float]],
                  radius: float = COVER_RADIUS) -> GridCoverage:
    """Grid coverage of one layer of Gaussian heads from their centres ``(heads, 2)`` (tokens).

    The paper's figures 3 and 4 (section 4.2) show the heads of a quadratic layer moving from
    near the query to a grid around it, the kernel of a convolution; Lemma 1 asks for one head
    per kernel offset. This measures it:

    * **covered neighbours**: the offsets ``Delta`` among the 8 neighbours of a 3x3 window
      (:data:`NEIGHBOUR_OFFSETS`) with some centre ``c`` at ``||c - Delta|| < radius``
      (Euclidean, strict). The neighbours are 1 token apart and ``radius <= 0.5``, so one head
      covers at most one offset: 8 needs 8 heads.
    * **distinct centres**: centres closer than ``radius`` to each other are the same centre,
      chained (the connected components of the graph linking every pair at distance
      ``< radius``); centres at least ``radius`` from every other count once each.

    Args:
        centers: ``(heads, 2)`` centres ``(row, col)`` relative to the query, in tokens.
        radius: in ``(0, 0.5]``; default 0.5.

    Raises:
        ShapeError: ``centers`` is not ``(heads, 2)``.
        ValueError: a centre is not finite, or ``radius`` is outside ``(0, 0.5]``.
    """
    if not (isinstance(radius, int | float) and 0 < radius <= 0.5):
        raise ValueError(f"radius must be in (0, 0.5] so that one head covers one offset at "
                         f"most, got {radius!r}")
    c = torch.as_tensor(centers, dtype=torch.float64)
    if c.numel() == 0:
        c = c.reshape(0, 2)
    if c.dim() != 2 or c.shape[1] != 2:
        raise ShapeError(f"centers must be (heads, 2) as (row, col), got {tuple(c.shape)}")
    if not torch.isfinite(c).all():
        raise ValueError("centers must be finite; a NaN/inf centre comes from a diverged run")
    r2 = radius * radius  # squared distances in float64: 0.5 exactly on the boundary
    offsets = torch.tensor(NEIGHBOUR_OFFSETS, dtype=torch.float64)  # (8, 2)
    near = ((offsets[:, None, :] - c[None]) ** 2).sum(-1) < r2  # (8, heads)
    covered = tuple(o for o, hit in zip(NEIGHBOUR_OFFSETS, near.any(dim=1).tolist(),
                                        strict=True) if hit)
    close = ((c[:, None, :] - c[None]) ** 2).sum(-1) < r2  # (heads, heads)
    return GridCoverage(heads=int(c.shape[0]), covered=covered,
                        distinct_centres=_components(close),
                        query_covered=bool(((c**2).sum(-1) < r2).any()))


def coverage_over_training(run_dir: str | Path) -> list[dict[str, Any]]:
    """Grid coverage of every quadratic layer of a run at initialisation and at the end.

    Reads ``heads.jsonl`` (the head centres the trainer records: ``epoch`` 0 before the first
    step, then one line per epoch). One row per quadratic layer (model order): ``layer``,
    ``heads``, ``init`` (:meth:`GridCoverage.as_dict` of epoch 0, None when the run did not
    record it), ``end`` (of the last recorded epoch) and ``end_epoch``. [] when the run has no
    ``heads.jsonl`` or no quadratic layer.
    """
    path = Path(run_dir) / "heads.jsonl"
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not records or not records[-1].get("layers"):
        return []
    first, last = records[0], records[-1]
    init = first["layers"] if first.get("epoch") == 0 else None
    rows = []
    for index, layer in enumerate(last["layers"]):
        start = None if init is None else grid_coverage(init[index]["centers"]).as_dict()
        rows.append({"layer": index, "heads": len(layer["centers"]), "init": start,
                     "end": grid_coverage(layer["centers"]).as_dict(),
                     "end_epoch": last.get("epoch")})
    return rows
