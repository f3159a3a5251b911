"""The interface every relative positional encoding implements, and what it declares it can do.

An encoding states its capabilities; :class:`attnconv.layers.SelfAttention2d` reads them to pick
an exact algorithm (:meth:`SelfAttention2d.algorithm`) and never looks at the encoding's class.

How to add an encoding
----------------------
1. Subclass :class:`RelativeEncoding`; set ``heads`` and ``query_dependent`` (class attribute
   or in ``__init__``) and implement :meth:`~RelativeEncoding.logits` (PAPER section 1, the
   positional term of the relative encoding). That alone is a complete encoding: the reference
   runs it, the ``"dense"`` path builds its positional-only logits from :meth:`logits`, and
   content attention runs the reference (``"fused"`` is not applicable).
2. Optional capabilities, each tested against :meth:`logits` (tests/layers/test_fast_paths.py):

   * positional-only logits that are exactly a row term plus a column term: implement
     :meth:`~RelativeEncoding.axis_logits` and return True from
     :attr:`~RelativeEncoding.separable` whenever they are exact for the value *and* the
     gradient (it may depend on the parameters and the grad mode, as for a diagonal
     ``Sigma^-1``). Positional-only layers then run ``"separable"`` where the dropout mode
     allows, accept ``attn_dropout_mode="factors"`` if it is separable with gradients on, and
     :meth:`~RelativeEncoding.query_key_factors` defaults to the broadcast of the axis logits.
   * positional-only logits that are key-row + key-column (+ a rank-one cross) terms for every
     query: implement :meth:`~RelativeEncoding.query_key_factors` and set ``factored = True``.
     The ``"dense"`` path then builds the logits by broadcast additions and content attention
     with this encoding runs ``"fused"``.
   * query-dependent logits (``query_dependent = True``): implement
     :meth:`~RelativeEncoding.query_axis_logits` (row and column scores of every query) and set
     ``factored = True`` for ``"fused"``.
3. Register the name: ``ENCODINGS`` and ``SelfAttention2d._make_encoding`` in
   :mod:`attnconv.layers.attention` (the only two places; the algorithm choice needs no
   edit), then add the new rows to the table of tests/layers/test_algorithm_table.py
   (regenerate it and check the new rows by hand) and the encoding to the fast-path tests.

The choice (:meth:`SelfAttention2d.applicable_algorithms`, then
:meth:`SelfAttention2d.algorithm`): content attention runs ``"fused"`` if there is no encoding
or it is ``factored`` (on a CPU only for inference over enough tokens), else the reference;
positional-only attention runs ``"separable"`` if the encoding is :attr:`separable` now and
the dropout mode allows it, else ``"dense"`` (identity values), else the reference.
"""

from __future__ import annotations

from torch import Tensor, nn


class RelativeEncoding(nn.Module):
    """A relative positional encoding: attention logits that depend on the shift ``k - q``.

    Subclasses implement :meth:`logits`. A *positional-only* encoding (``query_dependent`` is
    False) returns logits of shape ``(heads, H, W, H, W)`` that are the same for every image of
    the batch (the last term of the relative encoding in PAPER section 1). A query-dependent
    encoding takes the queries ``(B, heads, H, W, d)`` and returns ``(B, heads, H, W, H, W)``.

    Capabilities (see the module docstring): :attr:`separable` with :meth:`axis_logits`;
    ``factored`` with :meth:`query_key_factors` (positional-only) or :meth:`query_axis_logits`
    (query-dependent).
    """

    heads: int
    query_dependent: bool = False
    factored: bool = False
    """True when :meth:`query_key_factors` (positional-only) or :meth:`query_axis_logits`
    (query-dependent) is implemented: the ``"dense"`` and ``"fused"`` paths use them."""

    def logits(self, height: int, width: int, query: Tensor | None = None) -> Tensor:
        """Positional attention logits for an ``height x width`` token grid."""
        raise NotImplementedError

    @property
    def separable(self) -> bool:
        """True when :meth:`axis_logits` is exact now, for the value and the gradient.

        Default: False (the encoding has no separable form). An answer that depends on the
        parameters' values should be False while ``torch.compile`` traces
        (``torch.compiler.is_compiling()``), as :class:`QuadraticFullEncoding`'s is: branching
        on tensor values breaks the graph.
        """
        return False

    def axis_logits(self, height: int, width: int) -> tuple[Tensor, Tensor]:
        """Row ``(heads, H, H)`` and column ``(heads, W, W)`` logits whose sum is :meth:`logits`.

        ``logit[h, i, j, k, l] = row[h, i, k] + col[h, j, l]``; only called when
        :attr:`separable` is True.
        """
        raise NotImplementedError(f"{type(self).__name__} has no separable form")

    def query_key_factors(self, height: int, width: int) -> tuple[Tensor, Tensor, Tensor | None]:
        """Positional-only logits as key-row + key-column (+ cross) terms, for every query.

        Returns ``row (heads, H, W, H)``, ``col (heads, H, W, W)`` and ``cross (heads,)`` or
        None, with ``logit[h, i, j, k, l] = row[h, i, j, k] + col[h, i, j, l]
        + cross[h] k' l'`` up to a constant per query (``k' = k - (H-1)/2``,
        ``l' = l - (W-1)/2``; see :mod:`attnconv.layers.content`). The default broadcasts
        :meth:`axis_logits` (no cross term), exact when :meth:`axis_logits` is exact.
        """
        row, col = self.axis_logits(height, width)  # (heads, H, H), (heads, W, W)
        return (row[:, :, None, :].expand(self.heads, height, width, height),
                col[:, None, :, :].expand(self.heads, height, width, width), None)

    def query_axis_logits(self, query: Tensor) -> tuple[Tensor, Tensor]:
        """Query-dependent row and column scores (``query_dependent`` encodings).

        Args:
            query: ``(B, H, W, heads, d)`` queries in the projection's own layout.

        Returns:
            ``row (B, heads, H, W, H)`` and ``col (B, heads, H, W, W)``, with
            ``logits(..., query)[b, h, i, j, k, l] = row[b, h, i, j, k] + col[b, h, i, j, l]``.
        """
        raise NotImplementedError(f"{type(self).__name__} has no query-dependent row/column "
                                  f"scores")

    def check_size(self, height: int, width: int) -> None:
        """Raise ``ValueError`` if the encoding cannot cover a ``height x width`` grid."""

    def no_weight_decay(self) -> set[str]:
        """Names (relative to this module) of parameters that must not be weight-decayed."""
        return set()
