"""Compact storage of attention maps for the explorer page, and the page's size budget.

Each map is a batch of query rows ``(M, heads, Nq, Nk)`` (``Nq = Nk = H W`` tokens) of
probabilities summing to 1 over the keys, ``M`` = 1 (a map shared by every image) or one per
image. Two formats, both with one ``float32`` scale per row, the row's largest probability
``s = max_k p[k]``:

* ``dense``: every key as ``uint8`` ``v = round(255 p / s)``; decoded ``p' = v s / 255``, so
  ``|p' - p| <= s / 510`` (half a quantisation step). ``Nk + 4`` bytes per row.
* ``topk``: the ``k`` most attended keys of each row (``uint8`` indices when ``Nk <= 256``,
  ``uint16`` otherwise) and their ``uint8`` values as above; every other key decodes to 0.
  ``k (1 + index bytes) + 4`` bytes per row. Used only when the dense maps would not fit the
  page's budget: the page then says how many keys it keeps and the mass they hold.

Every array is stored little-endian and base64-encoded in the page (4 characters per 3 bytes).
:func:`plan_storage` picks the format from the size each choice would give, before anything is
computed: dense when it fits ``max_bytes``, else the largest ``k`` that fits.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

FORMATS = ("dense", "topk")
SCALE_BYTES = 4  # float32 row maximum


def b64(array: np.ndarray) -> str:
    """Base64 of a numpy array's bytes (little-endian, C order)."""
    data = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False)
    return base64.b64encode(data.tobytes()).decode("ascii")


def b64_len(nbytes: int) -> int:
    """Characters of the base64 text of ``nbytes`` bytes."""
    return 4 * math.ceil(nbytes / 3)


def index_bytes(keys: int) -> int:
    """Bytes per stored key index: 1 up to 256 keys, else 2."""
    return 1 if keys <= 256 else 2


# --------------------------------------------------------------------------------------------
# Quantisation (the page's JavaScript decodes exactly as the dequantise_* functions below)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EncodedMaps:
    """One batch of query rows in the page's format (see the module docstring).

    Attributes:
        format: ``"dense"`` or ``"topk"``.
        keys: ``Nk``, the keys of each row.
        values: ``uint8``, ``(..., Nk)`` dense or ``(..., k)`` top-k.
        scales: ``float32`` row maxima ``(...)``.
        indices: top-k only: the kept keys ``(..., k)``, ``uint8`` or ``uint16``.
        mass_kept: top-k only: the probability mass of the kept keys, per row ``(...)``.
    """

    format: str
    keys: int
    values: np.ndarray
    scales: np.ndarray
    indices: np.ndarray | None = None
    mass_kept: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        """Bytes of the stored arrays (before base64)."""
        extra = 0 if self.indices is None else self.indices.nbytes
        return self.values.nbytes + self.scales.nbytes + extra


def _rows(probs: Tensor) -> Tensor:
    if probs.dim() < 1 or probs.shape[-1] < 1:
        raise ValueError(f"expected query rows (..., keys), got shape {tuple(probs.shape)}")
    return probs.detach().to(device="cpu", dtype=torch.float32)


def quantise_dense(probs: Tensor) -> EncodedMaps:
    """Every key of every row as ``uint8`` relative to the row maximum (plus that maximum)."""
    p = _rows(probs)  # (..., Nk)
    scale = p.amax(dim=-1).clamp_min(torch.finfo(torch.float32).tiny)  # (...)
    values = torch.round(p / scale.unsqueeze(-1) * 255.0).clamp_(0, 255).to(torch.uint8)
    return EncodedMaps("dense", p.shape[-1], values.numpy(), scale.numpy())


def quantise_topk(probs: Tensor, k: int) -> EncodedMaps:
    """The ``k`` largest probabilities of each row, their key indices and the row maximum."""
    p = _rows(probs)  # (..., Nk)
    keys = p.shape[-1]
    if not 1 <= k <= keys:
        raise ValueError(f"k must be in 1..{keys} (the keys of a row), got {k}")
    top, index = p.topk(k, dim=-1)  # (..., k) each, largest first
    scale = top[..., 0].clamp_min(torch.finfo(torch.float32).tiny)  # (...) the row maximum
    values = torch.round(top / scale.unsqueeze(-1) * 255.0).clamp_(0, 255).to(torch.uint8)
    dtype = np.uint8 if index_bytes(keys) == 1 else np.dtype("<u2")
    return EncodedMaps("topk", keys, values.numpy(), scale.numpy(),
                       index.numpy().astype(dtype), top.sum(dim=-1).numpy())


def quantise(probs: Tensor, k: int | None) -> EncodedMaps:
    """Dense when ``k`` is None or covers every key, else top-``k``."""
    if k is None or k >= probs.shape[-1]:
        return quantise_dense(probs)
    return quantise_topk(probs, k)


def dequantise(encoded: EncodedMaps) -> np.ndarray:
    """The probabilities the page shows: ``float64 (..., Nk)``; zero for keys not kept."""
    scale = encoded.scales.astype(np.float64)[..., None]
    values = encoded.values.astype(np.float64) / 255.0 * scale
    if encoded.format == "dense":
        return values
    assert encoded.indices is not None
    out = np.zeros((*encoded.values.shape[:-1], encoded.keys))
    np.put_along_axis(out, encoded.indices.astype(np.int64), values, axis=-1)
    return out


def error_bound(encoded: EncodedMaps) -> np.ndarray:
    """Largest quantisation error of each row's kept keys, ``s / 510`` (half a step)."""
    return encoded.scales.astype(np.float64) / 510.0


# --------------------------------------------------------------------------------------------
# Size planning
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MapGroup:
    """Maps of one (layer, view): ``heads`` heads of ``queries`` rows over ``keys`` keys.

    ``shared``: one map for every image (positional-only attention), else one per image.
    """

    heads: int
    queries: int
    keys: int
    shared: bool


@dataclass(frozen=True)
class StoragePlan:
    """How the per-image maps are stored, and the page size that gives.

    Attributes:
        k: keys kept per query row of the per-image maps; None keeps every key (dense).
            Shared maps (one per layer) are always dense.
        estimated_bytes: the page's size: template, images, maps (base64) and metadata.
        dense_bytes: the size with every key of every map (what ``k = None`` would give).
    """

    k: int | None
    estimated_bytes: int
    dense_bytes: int

    def describe(self, keys: int) -> str:
        """One line for people: every key, or how many of how many."""
        if self.k is None or self.k >= keys:
            return "every key of every query (uint8 per probability, relative to the row max)"
        return (f"the {self.k} most attended of {keys} keys per query for the per-image maps "
                f"(a dense page would be {self.dense_bytes / 1e6:.1f} MB)")


def row_bytes(keys: int, k: int | None) -> int:
    """Stored bytes of one query row: dense, or top-``k``."""
    if k is None or k >= keys:
        return keys + SCALE_BYTES
    return k * (1 + index_bytes(keys)) + SCALE_BYTES


def page_bytes(groups: Sequence[MapGroup], images: int, image_bytes: int, k: int | None,
               fixed_bytes: int) -> int:
    """Size of a page holding ``groups`` for ``images`` images, per-image maps at ``k``.

    ``image_bytes``: pixels of one display image (``H W C``); ``fixed_bytes``: the template and
    the metadata. Every array is one base64 string (per image for per-image maps).
    """
    total = fixed_bytes + b64_len(images * image_bytes)
    for g in groups:
        rows = g.heads * g.queries
        if g.shared:
            total += b64_len(rows * g.keys) + b64_len(rows * SCALE_BYTES)
        else:
            per_image = b64_len(rows * (row_bytes(g.keys, k) - SCALE_BYTES))
            per_image += b64_len(rows * SCALE_BYTES)
            total += images * (per_image + 8)  # + quotes and commas of the JSON lists
    return total


def plan_storage(groups: Sequence[MapGroup], images: int, image_bytes: int, *,
                 max_bytes: int | None, fixed_bytes: int = 0) -> StoragePlan:
    """Dense if the page fits ``max_bytes`` (or there is no limit), else the largest ``k``.

    Raises:
        ValueError: even one key per query row would exceed ``max_bytes``.
    """
    dense = page_bytes(groups, images, image_bytes, None, fixed_bytes)
    per_image = [g for g in groups if not g.shared]
    if max_bytes is None or dense <= max_bytes or not per_image:
        return StoragePlan(None, dense, dense)
    keys = max(g.keys for g in per_image)
    fits = [k for k in range(1, keys)
            if page_bytes(groups, images, image_bytes, k, fixed_bytes) <= max_bytes]
    if not fits:
        smallest = page_bytes(groups, images, image_bytes, 1, fixed_bytes)
        raise ValueError(f"{images} images need {smallest / 1e6:.2f} MB even keeping one key per "
                         f"query, over the {max_bytes / 1e6:.2f} MB limit; pass fewer images or "
                         f"a larger size limit")
    k = max(fits)
    return StoragePlan(k, page_bytes(groups, images, image_bytes, k, fixed_bytes), dense)
