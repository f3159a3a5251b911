"""Learned relative row/column embeddings (PAPER section 3, "SA learned emb.").

Two tables hold one embedding per row shift and per column shift, ``2 * max_size - 1`` entries
each (shifts ``-(max_size - 1) .. max_size - 1``). They are used in two ways:

* positional-only: a per-head linear score on each table, summed,
  ``score_h(delta) = a_h . r_row(delta_1) + b_h . r_col(delta_2)``;
* query-dependent (with content attention, Ramachandran et al. 2019): the head's query is split
  in two halves, ``q_row . r_row(delta_1) + q_col . r_col(delta_2)``.

Initialisation follows the authors' code (epfml/attention-cnn, ``models/bert.py``,
``Learned2DRelativeSelfAttention``; their image model never applies BERT's N(0, 0.02) re-init):
the tables are ``nn.Embedding``'s default N(0, 1) and the per-head score vectors
``nn.Linear``'s default ``U(-1/sqrt(dim), 1/sqrt(dim))``. A positional-only head's logits then
spread with std ``|a_h| ~ 1/sqrt(3) ~ 0.58`` over the shifts of each axis at initialisation,
enough for SGD to make the heads local within a few dozen steps (a N(0, 0.02) table gives a
spread of ~0.02 and heads that stay uniform for much longer; see docs/paper-deviations.md).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from attnconv.layers.base import RelativeEncoding
from attnconv.layers.grid import as_pair, axis_offsets

TABLE_INIT_STD = 1.0
"""Std of the relative tables at initialisation: ``nn.Embedding``'s default, as the authors'."""


def relative_logits(query: Tensor, table: Tensor, size: int, max_size: int, axis: int) -> Tensor:
    """``out[..., k] = query[...] . table[k - a + max_size - 1]``, ``a`` the index on ``axis``.

    Args:
        query: ``(..., d)``; its dimension ``axis`` (of length ``size``) is the query coordinate
            ``a`` along the table's direction.
        table: ``(2 max_size - 1, d)`` embeddings of the shifts ``-(max_size - 1)..max_size - 1``.
        size: grid size along that direction (``<= max_size``).
        max_size: the table's maximal size.

    Returns:
        ``query.shape[:-1] + (size,)``: the score of every key coordinate ``k``. The scores of
        the ``2 size - 1`` shifts that occur are one product ``query @ table[window]^T``; an
        index gather then reads shift ``k - a`` for each ``(a, k)`` -- no ``(size, size, d)``
        table gather and no copy of the queries.
    """
    window = table[max_size - size:max_size + size - 1]  # (2 size - 1, d): shifts -(size-1)..
    scores = query @ window.t()  # (..., 2 size - 1)
    index = axis_offsets(size, device=query.device) + (size - 1)  # index[a, k] = k - a + size-1
    shape = [1] * scores.dim()
    shape[axis], shape[-1] = size, size
    index = index.view(shape).expand(*scores.shape[:-1], size)
    return torch.gather(scores, -1, index)  # (..., size)


class LearnedRelativeEncoding(RelativeEncoding):
    """Learned relative row and column embeddings.

    Args:
        heads: number of attention heads.
        dim: width of each table entry. Positional-only: any width (the paper uses the hidden
            size, 400). Query-dependent: half the query width of a head (the paper: 200).
        max_size: largest grid the tables cover, ``int`` or ``(max_height, max_width)``.
        query_dependent: if True the logits are ``q_row . r_row + q_col . r_col``; otherwise a
            learned per-head linear score on each table.
        init_std: standard deviation of the table entries at initialisation; the default
            :data:`TABLE_INIT_STD` (1.0) is ``nn.Embedding``'s, as in the authors' code. The
            per-head score vectors get ``nn.Linear``'s default init (see :meth:`reset_parameters`).
    """

    factored = True
    """Positional-only: :meth:`query_key_factors` (the base class's broadcast of
    :meth:`axis_logits`); query-dependent: :meth:`query_axis_logits`."""

    def __init__(
        self,
        heads: int,
        dim: int,
        *,
        max_size: int | tuple[int, int] = 32,
        query_dependent: bool = False,
        init_std: float = TABLE_INIT_STD,
    ) -> None:
        super().__init__()
        self.heads = heads
        self.dim = dim
        self.max_height, self.max_width = as_pair(max_size)
        if self.max_height < 1 or self.max_width < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        if not (math.isfinite(init_std) and init_std > 0):
            raise ValueError(f"init_std must be a finite positive number, got {init_std}; "
                             f"the default {TABLE_INIT_STD} is the authors' (nn.Embedding's)")
        self.query_dependent = query_dependent
        self.init_std = init_std
        self.row_embeddings = nn.Parameter(torch.empty(2 * self.max_height - 1, dim))
        self.col_embeddings = nn.Parameter(torch.empty(2 * self.max_width - 1, dim))
        if not query_dependent:
            # Per-head linear scores a_h, b_h (no bias: a constant does not change the softmax).
            self.row_score = nn.Parameter(torch.empty(heads, dim))
            self.col_score = nn.Parameter(torch.empty(heads, dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Tables ~ N(0, ``init_std``^2); per-head score vectors as ``nn.Linear(dim, heads)``.

        The score vectors ``(heads, dim)`` are the weight of a bias-free ``nn.Linear(dim,
        heads)``: ``kaiming_uniform_(a=sqrt(5))``, i.e. ``U(-1/sqrt(dim), 1/sqrt(dim))``.
        """
        with torch.no_grad():
            nn.init.normal_(self.row_embeddings, 0.0, self.init_std)
            nn.init.normal_(self.col_embeddings, 0.0, self.init_std)
            if not self.query_dependent:
                nn.init.kaiming_uniform_(self.row_score, a=math.sqrt(5))
                nn.init.kaiming_uniform_(self.col_score, a=math.sqrt(5))

    def check_size(self, height: int, width: int) -> None:
        if height > self.max_height or width > self.max_width:
            raise ValueError(
                f"a {height}x{width} token grid is larger than the learned relative tables "
                f"allow (max_size={self.max_height}x{self.max_width}); build the layer with "
                f"max_size >= {max(height, width)} (max_size=({height}, {width}) or larger)"
            )

    def _tables(self, height: int, width: int) -> tuple[Tensor, Tensor]:
        """Gather ``r_row[k - i]`` ``(H, H, dim)`` and ``r_col[l - j]`` ``(W, W, dim)``."""
        self.check_size(height, width)
        device = self.row_embeddings.device
        row_idx = axis_offsets(height, device=device) + self.max_height - 1  # (H, H)
        col_idx = axis_offsets(width, device=device) + self.max_width - 1  # (W, W)
        return self.row_embeddings[row_idx], self.col_embeddings[col_idx]

    @property
    def separable(self) -> bool:
        """Positional-only: a row score plus a column score. Query-dependent: not separable."""
        return not self.query_dependent

    def axis_logits(self, height: int, width: int) -> tuple[Tensor, Tensor]:
        """Positional-only separable form: row ``(heads, H, H)`` and column ``(heads, W, W)``."""
        if self.query_dependent:
            raise ValueError("query-dependent logits are not separable")
        r_row, r_col = self._tables(height, width)  # (H, H, dim), (W, W, dim)
        row = torch.einsum("hd,ikd->hik", self.row_score, r_row)  # (heads, H, H)
        col = torch.einsum("hd,jld->hjl", self.col_score, r_col)  # (heads, W, W)
        return row, col

    def query_axis_logits(self, query: Tensor) -> tuple[Tensor, Tensor]:
        """Query-dependent row and column scores: :meth:`relative_logits`."""
        return self.relative_logits(query)

    def relative_logits(self, query: Tensor) -> tuple[Tensor, Tensor]:
        """Query-dependent row and column scores by "relative logits" (no big gather).

        Args:
            query: ``(B, H, W, heads, 2 dim)`` queries in the projection's own layout.

        Returns:
            ``row (B, heads, H, W, H)`` with ``row[b, h, i, j, k] = q_row . r_row[k - i]`` and
            ``col (B, heads, H, W, W)`` with ``col[b, h, i, j, l] = q_col . r_col[l - j]``
            (permuted views). Each is one product with the ``2 size - 1`` table rows that
            occur, ``(B H W heads, dim) @ (dim, 2 size - 1)``, then an index gather.
        """
        _, height, width, _, _ = query.shape
        self.check_size(height, width)
        q_row, q_col = query.split(self.dim, dim=-1)  # (B, H, W, heads, dim) each
        row = relative_logits(q_row, self.row_embeddings, height, self.max_height, axis=1)
        col = relative_logits(q_col, self.col_embeddings, width, self.max_width, axis=2)
        return row.permute(0, 3, 1, 2, 4), col.permute(0, 3, 1, 2, 4)

    def logits(self, height: int, width: int, query: Tensor | None = None) -> Tensor:
        """Positional-only: ``(heads, H, W, H, W)``; query-dependent: ``(B, heads, H, W, H, W)``.

        For the query-dependent form ``query`` is ``(B, heads, H, W, 2 * dim)``; its first half
        scores the row table and its second half the column table.
        """
        if not self.query_dependent:
            row, col = self.axis_logits(height, width)
            return row[:, :, None, :, None] + col[:, None, :, None, :]  # (heads, H, W, H, W)
        r_row, r_col = self._tables(height, width)  # (H, H, dim), (W, W, dim)
        if query is None:
            raise ValueError("a query-dependent encoding needs the queries")
        q_row, q_col = query.split(self.dim, dim=-1)  # (B, heads, H, W, dim) each
        row = torch.einsum("bhijd,ikd->bhijk", q_row, r_row)  # (B, heads, H, W, H)
        col = torch.einsum("bhijd,jld->bhijl", q_col, r_col)  # (B, heads, H, W, W)
        return row[..., :, None] + col[..., None, :]  # (B, heads, H, W, H, W)

    def extra_repr(self) -> str:
        return (f"heads={self.heads}, dim={self.dim}, max_size=({self.max_height}, "
                f"{self.max_width}), query_dependent={self.query_dependent}")
