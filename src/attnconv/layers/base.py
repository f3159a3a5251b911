"""The interface every relative positional encoding implements."""

from __future__ import annotations

from torch import Tensor, nn


class RelativeEncoding(nn.Module):
    """A relative positional encoding: attention logits that depend on the shift ``k - q``.

    Subclasses implement :meth:`logits`. A *positional-only* encoding (``query_dependent`` is
    False) returns logits of shape ``(heads, H, W, H, W)`` that are the same for every image of
    the batch (the last term of the relative encoding in PAPER section 1). A query-dependent
    encoding takes the queries ``(B, heads, H, W, d)`` and returns ``(B, heads, H, W, H, W)``.
    """

    heads: int
    query_dependent: bool = False

    def logits(self, height: int, width: int, query: Tensor | None = None) -> Tensor:
        """Positional attention logits for an ``height x width`` token grid."""
        raise NotImplementedError

    def check_size(self, height: int, width: int) -> None:
        """Raise ``ValueError`` if the encoding cannot cover a ``height x width`` grid."""

    def no_weight_decay(self) -> set[str]:
        """Names (relative to this module) of parameters that must not be weight-decayed."""
        return set()
