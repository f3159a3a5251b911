"""2D multi-head self-attention with relative positional encodings (PAPER sections 1-3).

``SelfAttention2d`` takes channels-last image tokens ``(B, H, W, dim)``. Each head ``h`` computes
attention logits ``A_h = content + positional`` over all ``H * W`` keys, takes a softmax over the
keys, averages the values, and the concatenated head outputs go through one output projection
``W_out, b_out`` (PAPER section 1, MHSA). The computation below is the *reference*: it
materialises the logits of every (query, key) pair from the formulas. Faster exact algorithms
are tested against it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Literal, overload

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnconv.errors import ShapeError
from attnconv.layers.base import RelativeEncoding
from attnconv.layers.learned import LearnedRelativeEncoding
from attnconv.layers.quadratic import GaussianHeads, QuadraticEncoding, QuadraticFullEncoding
from attnconv.layers.separable import separable_mix

ENCODINGS = ("quadratic", "quadratic-full", "learned", "none")
IMPLS = ("auto", "reference")
_FORCE_REFERENCE = False


@contextlib.contextmanager
def reference_attention(enabled: bool = True) -> Iterator[None]:
    """Force every ``SelfAttention2d`` to use the reference computation (for debugging)."""
    global _FORCE_REFERENCE
    previous, _FORCE_REFERENCE = _FORCE_REFERENCE, enabled
    try:
        yield
    finally:
        _FORCE_REFERENCE = previous


def _check_positive(name: str, value: int, hint: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}; {hint}")


class SelfAttention2d(nn.Module):
    """Multi-head self-attention over a 2D grid of tokens with a relative positional encoding.

    Args:
        dim: channels of the input tokens ``D_in``.
        heads: number of heads ``N_h``.
        head_dim: value width of each head ``D_h``; defaults to ``dim`` (the paper's choice,
            ``D_h = D_out``: each head averages full-width values).
        out_dim: output channels ``D_out``; defaults to ``dim``.
        encoding: ``"quadratic"`` (isotropic Gaussian, Lemma 2), ``"quadratic-full"``
            (``Sigma^-1 = S S^T``), ``"learned"`` (relative row/column tables) or ``"none"``.
        content: add content attention ``q . k / sqrt(qk_dim)`` with learned query/key
            projections. With ``encoding="learned"`` the positional term becomes the
            query-dependent ``q_row . r_row + q_col . r_col`` (scaled by the same
            ``1/sqrt(qk_dim)``, which only reparametrises the tables), as in the paper's third
            model.
        attn_dropout: dropout on the attention probabilities (training only).
        value_proj: project the input to per-head values with a learned ``W_val``. ``None``
            (default) uses the identity when ``head_dim == dim`` (the paper's models: heads
            average the raw features and ``W_out`` carries ``W_val W_out``), a projection
            otherwise.
        qk_dim: width of each head's query and key (content attention); defaults to ``dim``.
        max_size: largest grid of the learned tables (``int`` or ``(H, W)``).
        pos_dim: entry width of the positional-only learned tables; defaults to ``dim``.
        impl: ``"auto"`` picks the fastest exact algorithm; ``"reference"`` always runs the
            reference computation (also forced globally by :func:`reference_attention`).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        head_dim: int | None = None,
        out_dim: int | None = None,
        encoding: str = "quadratic",
        content: bool = False,
        attn_dropout: float = 0.0,
        value_proj: bool | None = None,
        qk_dim: int | None = None,
        max_size: int | tuple[int, int] = 32,
        pos_dim: int | None = None,
        impl: str = "auto",
    ) -> None:
        super().__init__()
        _check_positive("dim", dim, "pass the number of input channels")
        _check_positive("heads", heads, "pass heads >= 1 (the paper uses 9)")
        head_dim = dim if head_dim is None else head_dim
        out_dim = dim if out_dim is None else out_dim
        qk_dim = dim if qk_dim is None else qk_dim
        _check_positive("head_dim", head_dim, "pass the value width of one head")
        _check_positive("out_dim", out_dim, "pass the number of output channels")
        if encoding not in ENCODINGS:
            raise ValueError(f"unknown encoding {encoding!r}; choose one of {', '.join(ENCODINGS)}")
        if encoding == "none" and not content:
            raise ValueError('encoding="none" leaves no attention logits; pass content=True or '
                             'choose a positional encoding')
        if not 0.0 <= attn_dropout < 1.0:
            raise ValueError(f"attn_dropout must be in [0, 1), got {attn_dropout}")
        if impl not in IMPLS:
            raise ValueError(f"unknown impl {impl!r}; choose one of {', '.join(IMPLS)}")
        if value_proj is None:
            value_proj = head_dim != dim
        if not value_proj and head_dim != dim:
            raise ValueError(f"value_proj=False needs head_dim == dim (got head_dim={head_dim}, "
                             f"dim={dim}); pass value_proj=True or head_dim={dim}")

        self.dim, self.heads, self.head_dim, self.out_dim = dim, heads, head_dim, out_dim
        self.encoding_name, self.content, self.qk_dim = encoding, content, qk_dim
        self.impl = impl

        self.value = nn.Linear(dim, heads * head_dim) if value_proj else None
        if content:
            _check_positive("qk_dim", qk_dim, "pass the query/key width of one head")
            self.query = nn.Linear(dim, heads * qk_dim)
            self.key = nn.Linear(dim, heads * qk_dim)
        else:
            self.query = self.key = None
        self.encoding: RelativeEncoding | None = self._make_encoding(
            encoding, content, max_size, pos_dim)
        self.attn_dropout = nn.Dropout(attn_dropout)
        self.out = nn.Linear(heads * head_dim, out_dim)  # W_out, b_out

    def _make_encoding(self, encoding: str, content: bool, max_size: int | tuple[int, int],
                       pos_dim: int | None) -> RelativeEncoding | None:
        if encoding == "quadratic":
            return QuadraticEncoding(self.heads)
        if encoding == "quadratic-full":
            return QuadraticFullEncoding(self.heads)
        if encoding == "learned":
            if content:
                if self.qk_dim % 2:
                    raise ValueError(f"learned encoding with content splits each query in two "
                                     f"halves; qk_dim must be even, got {self.qk_dim}")
                return LearnedRelativeEncoding(self.heads, self.qk_dim // 2, max_size=max_size,
                                               query_dependent=True)
            return LearnedRelativeEncoding(self.heads, pos_dim or self.dim, max_size=max_size)
        return None

    @property
    def positional_only(self) -> bool:
        """True when the attention depends on positions only (shared by every image)."""
        return not self.content

    # ----------------------------------------------------------------------------------------
    # Input checks
    # ----------------------------------------------------------------------------------------
    def check_input(self, x: Tensor) -> tuple[int, int, int]:
        """Validate ``x`` and return ``(B, H, W)``; raise :class:`ShapeError` if it is wrong."""
        if not isinstance(x, Tensor):
            raise TypeError(f"SelfAttention2d expects a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ShapeError(
                f"SelfAttention2d expects channels-last image tokens (B, H, W, {self.dim}); got "
                f"a {x.dim()}D tensor of shape {tuple(x.shape)}. Reshape a (B, N, C) sequence to "
                f"(B, H, W, C); for channels-first (B, C, H, W) use x.permute(0, 2, 3, 1)")
        b, h, w, c = x.shape
        if c != self.dim:
            hint = (" (it looks channels-first: use x.permute(0, 2, 3, 1))"
                    if h == self.dim else f"; build the layer with dim={c}")
            raise ShapeError(f"SelfAttention2d(dim={self.dim}) got {c} channels in the last axis "
                             f"of an input of shape {tuple(x.shape)}{hint}")
        if self.encoding is not None:
            self.check_size(h, w)
        return b, h, w

    def check_size(self, height: int, width: int) -> None:
        """Raise ``ValueError`` if this layer cannot attend over a ``height x width`` grid."""
        if height < 1 or width < 1:
            raise ShapeError(f"empty token grid {height}x{width}")
        if self.encoding is not None:
            self.encoding.check_size(height, width)

    # ----------------------------------------------------------------------------------------
    # Logits and attention (reference computation)
    # ----------------------------------------------------------------------------------------
    def queries_keys(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Per-head queries and keys ``(B, heads, H, W, qk_dim)`` (content attention only)."""
        if self.query is None or self.key is None:
            raise RuntimeError("this layer has no content attention (content=False)")
        b, h, w, _ = x.shape
        q = self.query(x).view(b, h, w, self.heads, self.qk_dim).permute(0, 3, 1, 2, 4)
        k = self.key(x).view(b, h, w, self.heads, self.qk_dim).permute(0, 3, 1, 2, 4)
        return q, k  # (B, heads, H, W, qk_dim) each

    def logits(self, x: Tensor) -> Tensor:
        """Attention logits ``(B', heads, H, W, H, W)``; ``B' = 1`` for positional-only.

        Relative encoding (PAPER section 1): content ``q . k`` plus the positional term, all
        scaled by ``1 / sqrt(qk_dim)`` for the content and learned query-dependent terms; the
        Gaussian terms are in the paper's units and not rescaled.
        """
        _, h, w = self.check_input(x)
        if not self.content:
            assert self.encoding is not None
            return self.encoding.logits(h, w).unsqueeze(0)  # (1, heads, H, W, H, W)
        q, k = self.queries_keys(x)
        scores = torch.einsum("bnijd,bnkld->bnijkl", q, k)  # (B, heads, H, W, H, W)
        if self.encoding is not None and self.encoding.query_dependent:
            scores = scores + self.encoding.logits(h, w, query=q)
        scores = scores / math.sqrt(self.qk_dim)
        if self.encoding is not None and not self.encoding.query_dependent:
            scores = scores + self.encoding.logits(h, w).unsqueeze(0)
        return scores

    def attention(self, x: Tensor) -> Tensor:
        """Attention probabilities ``(B', heads, H, W, H, W)``, summing to 1 over the keys."""
        return softmax_attention(self.logits(x))

    def values(self, x: Tensor) -> Tensor:
        """Per-head values ``(B, heads or 1, N, head_dim)`` (identity values broadcast)."""
        b, h, w, _ = x.shape
        if self.value is None:
            return x.reshape(b, 1, h * w, self.dim)  # W_val = I, shared by all heads
        v = self.value(x).view(b, h * w, self.heads, self.head_dim)
        return v.transpose(1, 2)  # (B, heads, N, head_dim)

    @overload
    def forward(self, x: Tensor, return_attention: Literal[False] = ...) -> Tensor: ...

    @overload
    def forward(self, x: Tensor, return_attention: Literal[True]) -> tuple[Tensor, Tensor]: ...

    def forward(self, x: Tensor, return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Attend over ``x`` ``(B, H, W, dim)`` and return ``(B, H, W, out_dim)``.

        With ``return_attention=True`` also return the attention probabilities
        ``(B', heads, H, W, H, W)`` (query row, query col, key row, key col), before attention
        dropout; ``B' = 1`` for positional-only attention, which is the same for every image.
        """
        b, h, w = self.check_input(x)
        if self.algorithm() == "separable":
            return self._forward_separable(x, return_attention)
        n = h * w
        attn = self.attention(x)  # (B', heads, H, W, H, W)
        probs = attn.reshape(attn.shape[0], self.heads, n, n)  # (B', heads, N, N)
        if self.training and self.attn_dropout.p > 0:
            # Dropout on the probabilities, independently for every image (paper semantics).
            probs = self.attn_dropout(probs.expand(b, -1, -1, -1))
        mixed = probs @ self.values(x)  # (B, heads, N, head_dim)
        mixed = mixed.transpose(1, 2).reshape(b, h, w, self.heads * self.head_dim)
        y = self.out(mixed)  # (B, H, W, out_dim)
        return (y, attn) if return_attention else y

    # ----------------------------------------------------------------------------------------
    # Exact fast paths (each tested against the reference above)
    # ----------------------------------------------------------------------------------------
    def algorithm(self) -> str:
        """The algorithm the next forward pass uses: ``"separable"`` or ``"reference"``."""
        if self.impl == "reference" or _FORCE_REFERENCE or self.content:
            return "reference"
        if self.training and self.attn_dropout.p > 0:
            return "reference"  # dropout on the joint probabilities does not factorise
        if hasattr(self.encoding, "axis_logits"):
            return "separable"
        return "reference"

    def _forward_separable(self, x: Tensor,
                           return_attention: bool) -> Tensor | tuple[Tensor, Tensor]:
        b, h, w, _ = x.shape
        assert self.encoding is not None
        row, col = self.encoding.axis_logits(h, w)  # (heads, H, H), (heads, W, W)
        row, col = row.softmax(dim=-1), col.softmax(dim=-1)
        if self.value is None:
            values = x.unsqueeze(1)  # (B, 1, H, W, dim), shared by all heads
        else:
            values = self.value(x).view(b, h, w, self.heads, self.head_dim).permute(0, 3, 1, 2, 4)
        mixed = separable_mix(row, col, values)  # (B, heads, H, W, head_dim)
        mixed = mixed.permute(0, 2, 3, 1, 4).reshape(b, h, w, self.heads * self.head_dim)
        y = self.out(mixed)  # (B, H, W, out_dim)
        if not return_attention:
            return y
        attn = row[:, :, None, :, None] * col[:, None, :, None, :]  # (heads, H, W, H, W)
        return y, attn.unsqueeze(0)

    # ----------------------------------------------------------------------------------------
    # Introspection
    # ----------------------------------------------------------------------------------------
    def gaussian_parameters(self) -> GaussianHeads:
        """Per-head centres (pixels) and ``Sigma^-1`` (and ``alpha`` when isotropic).

        Only for the quadratic encodings; raises ``TypeError`` otherwise.
        """
        if not isinstance(self.encoding, QuadraticEncoding | QuadraticFullEncoding):
            raise TypeError(f"gaussian_parameters() needs a quadratic encoding, this layer uses "
                            f"encoding={self.encoding_name!r}")
        return self.encoding.gaussian_parameters()

    def no_weight_decay(self) -> set[str]:
        """Parameter names (relative to this layer) excluded from weight decay."""
        if self.encoding is None:
            return set()
        return {f"encoding.{name}" for name in self.encoding.no_weight_decay()}

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, heads={self.heads}, head_dim={self.head_dim}, "
                f"out_dim={self.out_dim}, encoding={self.encoding_name!r}, "
                f"content={self.content}")


def softmax_attention(logits: Tensor) -> Tensor:
    """Softmax of ``(..., H, W, H, W)`` logits over the last two (key) axes."""
    return F.softmax(logits.flatten(-2), dim=-1).view(logits.shape)
