"""2D multi-head self-attention with relative positional encodings (PAPER sections 1-3).

``SelfAttention2d`` takes channels-last image tokens ``(B, H, W, dim)``. Each head ``h`` computes
attention logits ``A_h = content + positional`` over all ``H * W`` keys, takes a softmax over the
keys, averages the values, and the concatenated head outputs go through one output projection
``W_out, b_out`` (PAPER section 1, MHSA). :meth:`SelfAttention2d.forward_reference` is the
*reference*: it materialises the logits of every (query, key) pair from the formulas. Each layer
picks the fastest exact algorithm for its configuration (:meth:`SelfAttention2d.algorithm`),
and every one is tested against the reference (outputs and gradients, float64):

* ``"separable"`` -- positional-only logits that are a row term plus a column term (isotropic
  quadratic; learned positional-only; quadratic-full whose ``Sigma^-1`` is exactly diagonal
  and needs no gradient), identity values, no probability dropout: the softmax factorises into
  a row and a column softmax (:mod:`attnconv.layers.separable`).
* ``"dense"`` -- other positional-only attention (full covariance), and positional-only
  attention under dropout on the probabilities (``attn_dropout_mode="batch"`` or
  ``"probabilities"``): one ``(heads, N, N)`` attention for the whole batch, applied as one
  batched product (:mod:`attnconv.layers.dense`).
* ``"fused"`` -- content attention (with a learned query-dependent, a quadratic, or no
  positional term): ``scaled_dot_product_attention`` on queries and keys augmented by the
  factorised positional logits (:mod:`attnconv.layers.content`).

The choice reads what the encoding declares it can do (:mod:`attnconv.layers.base`:
``separable``, ``factored``, ``query_dependent``), never its class. One mechanism forces an
algorithm: a layer's ``impl``, overridden for every layer inside :func:`attention_impl`
(:func:`reference_attention` is ``attention_impl("reference")``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Literal, overload

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnconv.errors import ShapeError
from attnconv.layers.base import RelativeEncoding
from attnconv.layers.content import content_attention
from attnconv.layers.dense import shared_attention
from attnconv.layers.learned import LearnedRelativeEncoding
from attnconv.layers.precision import compute_dtype, full_precision
from attnconv.layers.quadratic import GaussianHeads, QuadraticEncoding, QuadraticFullEncoding
from attnconv.layers.separable import factor_dropout, separable_attention, separable_mix

ENCODINGS = ("quadratic", "quadratic-full", "learned", "none")
ALGORITHMS = ("reference", "separable", "dense", "fused")
IMPLS = ("auto", *ALGORITHMS)
DROPOUT_MODES = ("batch", "probabilities", "factors")
"""Attention-dropout semantics (see :class:`SelfAttention2d`): ``"batch"`` is the authors' for
positional-only attention, ``"probabilities"`` the per-image law (and the only one for content
attention), ``"factors"`` the opt-in separable approximation of the per-image law."""
FUSED_CPU_MIN_TOKENS = 512
"""On a CPU, content attention uses the fused kernel for inference from this many tokens on:
measured (docs/performance.md) slower than the reference's products at 16x16 tokens, faster
at 32x32 and 64x64."""
_FORCED_IMPL: str | None = None
"""The ``impl`` every layer runs with inside :func:`attention_impl` (None: each its own)."""


@contextlib.contextmanager
def attention_impl(impl: str | None) -> Iterator[None]:
    """Run every ``SelfAttention2d`` as if built with ``impl=impl`` inside the block.

    ``None`` gives every layer its own ``impl`` back (e.g. inside an outer block). Naming an
    algorithm that is not exact for a layer makes that layer's forward pass raise
    ``ValueError``, as ``impl=`` does. Blocks nest; the innermost wins.
    """
    global _FORCED_IMPL
    if impl is not None and impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r}; choose one of {', '.join(IMPLS)} (or None)")
    previous, _FORCED_IMPL = _FORCED_IMPL, impl
    try:
        yield
    finally:
        _FORCED_IMPL = previous


def reference_attention(enabled: bool = True) -> contextlib.AbstractContextManager[None]:
    """Force every ``SelfAttention2d`` to use the reference computation (for debugging).

    ``attention_impl("reference")``; ``enabled=False`` (``attention_impl(None)``) lifts an
    enclosing block.
    """
    return attention_impl("reference" if enabled else None)


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
        attn_dropout_mode: ``"probabilities"`` (the layer's default): every image drops
            entries of its own ``(HW) x (HW)`` probabilities independently. ``"batch"``
            (positional-only attention; the authors' code, and the default of the paper's
            positional-only models): one mask per forward pass on the ``(heads, HW, HW)``
            probabilities, shared by every image of the batch, survivors scaled by
            ``1 / (1 - p)`` (:meth:`batch_dropout_mask`; under data-parallel training each
            process draws one for its share of the batch). ``"factors"`` (opt-in, separable
            encodings only): every image drops entries of its row and column probabilities
            ``R``, ``C`` instead, which keeps the fast separable path in training; same marginal
            keep probability and expectation, correlated masks (see
            :func:`attnconv.layers.separable.factor_dropout`).
        value_proj: project the input to per-head values with a learned ``W_val``. ``None``
            (default) uses the identity when ``head_dim == dim`` (the paper's models: heads
            average the raw features and ``W_out`` carries ``W_val W_out``), a projection
            otherwise.
        qk_dim: width of each head's query and key (content attention); defaults to ``dim``.
        max_size: largest grid of the learned tables (``int`` or ``(H, W)``).
        pos_dim: entry width of the positional-only learned tables; defaults to ``dim``.
        impl: ``"auto"`` picks the fastest exact algorithm; ``"reference"`` always runs the
            reference computation; ``"separable"``, ``"dense"`` or ``"fused"`` force that
            algorithm (see :meth:`algorithm`). Overridden for every layer inside
            :func:`attention_impl` (and :func:`reference_attention`).
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
        attn_dropout_mode: str = "probabilities",
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
        if attn_dropout_mode not in DROPOUT_MODES:
            raise ValueError(f"unknown attn_dropout_mode {attn_dropout_mode!r}; choose one of "
                             f"{', '.join(DROPOUT_MODES)}")
        if attn_dropout_mode == "batch" and content:
            raise ValueError('attn_dropout_mode="batch" shares one mask over the batch and needs '
                             'positional-only attention (content=False); content attention '
                             'differs per image: use attn_dropout_mode="probabilities" (the '
                             'only valid mode with content=True)')
        if value_proj is None:
            value_proj = head_dim != dim
        if not value_proj and head_dim != dim:
            raise ValueError(f"value_proj=False needs head_dim == dim (got head_dim={head_dim}, "
                             f"dim={dim}); pass value_proj=True or head_dim={dim}")

        self.dim, self.heads, self.head_dim, self.out_dim = dim, heads, head_dim, out_dim
        self.encoding_name, self.content, self.qk_dim = encoding, content, qk_dim
        self.impl = impl
        self.attn_dropout_mode = attn_dropout_mode

        self.value = nn.Linear(dim, heads * head_dim) if value_proj else None
        if content:
            _check_positive("qk_dim", qk_dim, "pass the query/key width of one head")
            self.query = nn.Linear(dim, heads * qk_dim)
            self.key = nn.Linear(dim, heads * qk_dim)
        else:
            self.query = self.key = None
        self.encoding: RelativeEncoding | None = self._make_encoding(
            encoding, content, max_size, pos_dim)
        if attn_dropout_mode == "factors" and (content or not self._separable_in_training()):
            raise ValueError('attn_dropout_mode="factors" needs separable positional-only '
                             'attention (encoding "quadratic" or "learned", content=False)')
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
    def _projected_qk(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Queries and keys in the projections' own layout ``(B, H, W, heads, qk_dim)``."""
        if self.query is None or self.key is None:
            raise RuntimeError("this layer has no content attention (content=False)")
        b, h, w, _ = x.shape
        q = self.query(x).view(b, h, w, self.heads, self.qk_dim)
        k = self.key(x).view(b, h, w, self.heads, self.qk_dim)
        return q, k  # (B, H, W, heads, qk_dim) each

    def queries_keys(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Per-head queries and keys ``(B, heads, H, W, qk_dim)`` (content attention only)."""
        q, k = self._projected_qk(x)
        return q.permute(0, 3, 1, 2, 4), k.permute(0, 3, 1, 2, 4)  # (B, heads, H, W, qk_dim)

    def _logit_dtype(self) -> torch.dtype:
        """Logits and probabilities are float32, or the parameters' dtype when wider."""
        return torch.promote_types(self.out.weight.dtype, torch.float32)

    def logits(self, x: Tensor) -> Tensor:
        """Attention logits ``(B', heads, H, W, H, W)``; ``B' = 1`` for positional-only.

        Relative encoding (PAPER section 1): content ``q . k`` plus the positional term, all
        scaled by ``1 / sqrt(qk_dim)`` for the content and learned query-dependent terms; the
        Gaussian terms are in the paper's units and not rescaled. Computed in float32 (or
        float64) even under autocast; the query/key projections follow autocast.
        """
        _, h, w = self.check_input(x)
        dtype = self._logit_dtype()
        if not self.content:
            assert self.encoding is not None
            with full_precision(x.device.type):
                return self.encoding.logits(h, w).to(dtype).unsqueeze(0)  # (1, heads, H, W, H, W)
        q, k = self.queries_keys(x)
        with full_precision(x.device.type):
            q, k = q.to(dtype), k.to(dtype)
            scores = torch.einsum("bnijd,bnkld->bnijkl", q, k)  # (B, heads, H, W, H, W)
            if self.encoding is not None and self.encoding.query_dependent:
                scores = scores + self.encoding.logits(h, w, query=q)
            scores = scores / math.sqrt(self.qk_dim)
            if self.encoding is not None and not self.encoding.query_dependent:
                scores = scores + self.encoding.logits(h, w).to(dtype).unsqueeze(0)
        return scores

    def positional_logits(self, x: Tensor) -> Tensor:
        """The positional term of :meth:`logits` alone, ``(B', heads, H, W, H, W)``.

        In the same units as inside :meth:`logits`: a query-dependent encoding's
        ``logits(query=q) / sqrt(qk_dim)`` (``B' = B``), any other its fixed logits
        (``B' = 1``). Raises ``ValueError`` when the layer has no positional encoding.
        """
        _, h, w = self.check_input(x)
        if self.encoding is None:
            raise ValueError("this layer has no positional encoding (encoding='none')")
        if self.content and self.encoding.query_dependent:
            q, _ = self.queries_keys(x)  # (B, heads, H, W, qk_dim)
            return self.encoding.logits(h, w, query=q) / math.sqrt(self.qk_dim)
        return self.encoding.logits(h, w).unsqueeze(0)  # (1, heads, H, W, H, W)

    def attention(self, x: Tensor) -> Tensor:
        """Attention probabilities ``(B', heads, H, W, H, W)``, summing to 1 over the keys."""
        logits = self.logits(x)
        with full_precision(x.device.type):
            return softmax_attention(logits)

    def values(self, x: Tensor) -> Tensor:
        """Per-head values ``(B, heads or 1, N, head_dim)`` (identity values broadcast)."""
        b, h, w, _ = x.shape
        if self.value is None:
            return x.reshape(b, 1, h * w, self.dim)  # W_val = I, shared by all heads
        v = self.value(x).view(b, h * w, self.heads, self.head_dim)
        return v.transpose(1, 2)  # (B, heads, N, head_dim)

    def _axis_probabilities(self, height: int, width: int) -> tuple[Tensor, Tensor]:
        """Row ``(heads, H, H)`` and column ``(heads, W, W)`` softmaxes (separable encodings)."""
        assert self.encoding is not None
        with full_precision(self.out.weight.device.type):
            row, col = self.encoding.axis_logits(height, width)
            dtype = self._logit_dtype()
            return row.to(dtype).softmax(dim=-1), col.to(dtype).softmax(dim=-1)

    def _dropout_active(self) -> bool:
        return self.training and self.attn_dropout.p > 0

    def batch_dropout_mask(self, tokens: int, *, device: torch.device,
                           dtype: torch.dtype) -> Tensor:
        """The scaled keep-mask ``(heads, N, N)`` of ``attn_dropout_mode="batch"``.

        Entries are ``0`` (dropped, probability ``p``) or ``1 / (1 - p)``, one mask for the whole
        batch. Drawn as ``F.dropout`` of a tensor of ones, so it consumes the random stream
        exactly like ``nn.Dropout`` on the ``(heads, N, N)`` probabilities (the authors' code):
        every algorithm of this layer multiplies its probabilities by this one mask.
        """
        ones = torch.ones(self.heads, tokens, tokens, device=device, dtype=dtype)
        return F.dropout(ones, self.attn_dropout.p, training=True)

    @overload
    def forward(self, x: Tensor, return_attention: Literal[False] = ...) -> Tensor: ...

    @overload
    def forward(self, x: Tensor, return_attention: Literal[True]) -> tuple[Tensor, Tensor]: ...

    def forward(self, x: Tensor, return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Attend over ``x`` ``(B, H, W, dim)`` and return ``(B, H, W, out_dim)``.

        With ``return_attention=True`` also return the attention probabilities
        ``(B', heads, H, W, H, W)`` (query row, query col, key row, key col), before attention
        dropout; ``B' = 1`` for positional-only attention, which is the same for every image.
        Runs :meth:`algorithm`'s choice; every choice computes the same function.
        """
        _, h, w = self.check_input(x)
        algorithm = self.algorithm(h * w)
        if algorithm == "reference":
            return self.forward_reference(x, return_attention)
        forward = {"separable": self._forward_separable, "dense": self._forward_dense,
                   "fused": self._forward_fused}[algorithm]
        y, attn = forward(x, return_attention)
        if return_attention:
            assert attn is not None
            return y, attn
        return y

    def forward_reference(self, x: Tensor,
                          return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """The reference computation: every ``(HW) x (HW)`` logit from the formulas."""
        b, h, w = self.check_input(x)
        n = h * w
        if self._dropout_active() and self.attn_dropout_mode == "factors":
            row, col = self._axis_probabilities(h, w)
            attn = (row[:, :, None, :, None] * col[:, None, :, None, :]).unsqueeze(0)
            row_b, col_b = factor_dropout(row, col, b, self.attn_dropout.p)
            probs = row_b[:, :, :, None, :, None] * col_b[:, :, None, :, None, :]
            probs = probs.reshape(b, self.heads, n, n)  # (B, heads, N, N)
        else:
            attn = self.attention(x)  # (B', heads, H, W, H, W)
            probs = attn.reshape(attn.shape[0], self.heads, n, n)  # (B', heads, N, N)
            if self._dropout_active() and self.attn_dropout_mode == "batch":
                # One mask for the batch on the (heads, N, N) probabilities (authors' code).
                probs = probs * self.batch_dropout_mask(n, device=probs.device, dtype=probs.dtype)
            elif self._dropout_active():
                # Dropout on the probabilities, independently for every image.
                probs = self.attn_dropout(probs.expand(b, -1, -1, -1))
        values = self.values(x)
        mixed = probs.to(values.dtype) @ values  # (B, heads, N, head_dim)
        mixed = mixed.transpose(1, 2).reshape(b, h, w, self.heads * self.head_dim)
        y = self.out(mixed)  # (B, H, W, out_dim)
        return (y, attn) if return_attention else y

    # ----------------------------------------------------------------------------------------
    # Exact fast paths (each tested against the reference above)
    # ----------------------------------------------------------------------------------------
    def algorithm(self, tokens: int | None = None) -> str:
        """The algorithm a forward pass over ``tokens`` tokens uses (one of :data:`ALGORITHMS`).

        ``impl="auto"`` picks the fastest exact one for the configuration and the mode:

        * ``"separable"``: positional-only logits that split into a row and a column term
          (isotropic quadratic, learned positional-only, exactly diagonal ``Sigma^-1`` when
          ``S`` needs no gradient, and not while ``torch.compile`` traces: a diagonal test on
          ``S``'s values would break the graph, so compiled code takes the dense path there),
          unless the paper's probability dropout is active (with
          ``attn_dropout_mode="factors"`` it stays separable in training).
        * ``"dense"``: the other positional-only cases (full covariance; probability dropout,
          ``"batch"`` or ``"probabilities"``).
        * ``"fused"``: content attention, except on a CPU when training (PyTorch's fused CPU
          kernel has a slower backward pass than the reference's matrix products) or for fewer
          than :data:`FUSED_CPU_MIN_TOKENS` tokens (``tokens=None``: assume many); there
          ``"reference"`` is the fastest (docs/performance.md).
        * ``"reference"``: also for a learned value projection where no fast path applies.

        ``impl="reference"`` forces the reference; naming an algorithm in ``impl`` forces it
        (``ValueError`` if it is not exact for this layer). :func:`attention_impl` (and
        :func:`reference_attention`) override ``impl`` for every layer inside the block.
        """
        impl = self.impl if _FORCED_IMPL is None else _FORCED_IMPL
        if impl == "reference":
            return "reference"
        applicable = self.applicable_algorithms()
        if impl != "auto":
            if impl not in applicable:
                raise ValueError(f"impl={impl!r} is not exact for this layer in this mode; "
                                 f"applicable: {', '.join(applicable)}")
            return impl
        if "fused" in applicable:
            if self.out.weight.device.type != "cpu":
                return "fused"
            training = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
            small = tokens is not None and tokens < FUSED_CPU_MIN_TOKENS
            return "reference" if training or small else "fused"
        for name in ("separable", "dense"):
            if name in applicable:
                return name
        return "reference"

    def applicable_algorithms(self) -> tuple[str, ...]:
        """Every algorithm that computes this layer exactly in the current mode.

        From the encoding's declared capabilities (:mod:`attnconv.layers.base`): ``"fused"``
        for content attention with no encoding or a ``factored`` one; ``"separable"`` for a
        ``separable`` one; ``"dense"`` for positional-only attention with identity values.
        """
        if self.content:
            if self.encoding is None or self.encoding.factored:
                return ("fused", "reference")
            return ("reference",)
        dropout = self._dropout_active()
        factors = dropout and self.attn_dropout_mode == "factors"
        names = []
        if self._separable() and (not dropout or factors) and (self.value is None or not dropout):
            names.append("separable")
        if self.value is None and not factors:
            names.append("dense")
        return (*names, "reference")

    def _separable_in_training(self) -> bool:
        """True when the encoding is separable while its parameters get gradients."""
        with torch.enable_grad():
            return self._separable()

    def _separable(self) -> bool:
        """True when the positional logits split exactly into a row and a column term now."""
        return self.encoding is not None and self.encoding.separable

    def _fuse_output(self) -> bool:
        """Whether the fast paths may fold ``self.out`` into their own products.

        Not when ``out`` is not a plain ``nn.Linear`` or carries hooks (module or global):
        then ``self.out`` is called as a module so that its hooks fire.
        """
        out = self.out
        if type(out) is not nn.Linear:
            return False
        if out._forward_hooks or out._forward_pre_hooks:
            return False
        import torch.nn.modules.module as module_mod

        return not (module_mod._global_forward_hooks or module_mod._global_forward_pre_hooks)

    def _mix_and_project(self, x: Tensor,
                         mix: Callable[[Tensor, Tensor | None, Tensor | None], Tensor]) -> Tensor:
        """Run a fast path's kernel and the output projection ``W_out, b_out`` (PAPER sec. 1).

        ``mix(x, weight, bias)`` gets ``x`` in the compute dtype and, when the projection may
        be folded into its products (:meth:`_fuse_output`), ``W_out`` and ``b_out`` in that
        dtype: it returns ``(B, H, W, out_dim)``; otherwise ``None, None`` and it returns the
        mixed heads ``(B, H, W, heads D)``, which go through ``self.out`` as a module. The
        kernel runs under :func:`full_precision` (no autocast inside).
        """
        dtype = compute_dtype(x)
        fuse = self._fuse_output()
        with full_precision(x.device.type):
            weight = self.out.weight.to(dtype) if fuse else None
            bias = self.out.bias.to(dtype) if fuse and self.out.bias is not None else None
            y = mix(x.to(dtype), weight, bias)
        if not fuse:
            y = self.out(y)  # y was the mixed heads (B, H, W, heads D)
        return y

    def _forward_separable(self, x: Tensor,
                           return_attention: bool) -> tuple[Tensor, Tensor | None]:
        b, h, w, _ = x.shape
        row, col = self._axis_probabilities(h, w)  # (heads, H, H), (heads, W, W)
        attn = None
        if return_attention:
            attn = (row[:, :, None, :, None] * col[:, None, :, None, :]).unsqueeze(0)
        if self._dropout_active():  # attn_dropout_mode == "factors"
            row, col = factor_dropout(row, col, b, self.attn_dropout.p)  # (B, heads, ., .)
        if self.value is not None:  # projected values: the generic factorised product
            v = self.value(x)
            values = v.view(b, h, w, self.heads, self.head_dim).permute(0, 3, 1, 2, 4)
            mixed = separable_mix(row.to(v.dtype), col.to(v.dtype), values)  # (B, heads, H, W, D)
            mixed = mixed.permute(0, 2, 3, 1, 4).reshape(b, h, w, self.heads * self.head_dim)
            return self.out(mixed), attn
        dtype = compute_dtype(x)

        def mix(xc: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
            return separable_attention(xc, row.to(dtype), col.to(dtype), weight, bias)

        return self._mix_and_project(x, mix), attn

    def _forward_dense(self, x: Tensor, return_attention: bool) -> tuple[Tensor, Tensor | None]:
        _, h, w, _ = x.shape
        n = h * w
        assert self.encoding is not None and self.value is None
        with full_precision(x.device.type):
            # Computed once, independently of the batch, in the (query, head, key) layout.
            logits = self._factored_logits(h, w, query_major=True)  # (H, W, heads, H, W)
            probs = softmax_attention(logits)  # (H, W, heads, H, W)
        attn = probs.permute(2, 0, 1, 3, 4)  # (heads, H, W, H, W), a view
        p = self.attn_dropout.p if self._dropout_active() else 0.0

        def mix(xc: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
            dropout = p
            stacked = probs.view(n, self.heads, n)  # (q, heads, k)
            if dropout > 0 and self.attn_dropout_mode == "batch":
                # One mask for the whole batch (the reference's): the left factor stays shared.
                mask = self.batch_dropout_mask(n, device=probs.device, dtype=probs.dtype)
                stacked, dropout = stacked * mask.transpose(0, 1), 0.0  # (q, heads, k)
            shared = stacked.to(xc.dtype).transpose(0, 1)  # (heads, N, N), a view
            # With one matrix for the batch, m is kept for dW_out (as nn.Linear keeps its input):
            # faster training steps than recomputing it, for B N heads D more memory
            # (measured in docs/performance.md).
            return shared_attention(xc, shared, weight, bias, dropout=dropout, save_mixed=True)

        return self._mix_and_project(x, mix), (attn.unsqueeze(0) if return_attention else None)

    def _factored_logits(self, height: int, width: int, *, query_major: bool = False) -> Tensor:
        """Positional logits as key-row + key-column (+ cross) terms.

        Same softmax as ``encoding.logits`` (they differ by a constant per query), built with
        two broadcast additions instead of the elementwise formula over the full grid. Laid out
        ``(heads, H, W, H, W)``, or ``(H, W, heads, H, W)`` (query, head, key) with
        ``query_major``.
        """
        assert self.encoding is not None
        dtype = self._logit_dtype()
        if not self.encoding.factored:
            logits = self.encoding.logits(height, width).to(dtype)
            return logits.permute(1, 2, 0, 3, 4).contiguous() if query_major else logits
        # (heads, H, W, H), (heads, H, W, W), (heads,) or None
        row, col, cross = self.encoding.query_key_factors(height, width)
        row, col = row.to(dtype), col.to(dtype)
        if query_major:
            row, col = row.permute(1, 2, 0, 3), col.permute(1, 2, 0, 3)  # (H, W, heads, .)
        logits = row[..., :, None] + col[..., None, :]
        if cross is not None:
            k = torch.arange(height, dtype=dtype, device=row.device) - (height - 1) / 2
            l = torch.arange(width, dtype=dtype, device=row.device) - (width - 1) / 2
            feature = k[:, None] * l[None, :]  # (H, W): the key feature k' l'
            coef = cross.to(dtype).view(1, 1, -1, 1, 1) if query_major else (
                cross.to(dtype).view(-1, 1, 1, 1, 1))
            logits = logits + coef * feature
        return logits

    def _forward_fused(self, x: Tensor, return_attention: bool) -> tuple[Tensor, Tensor | None]:
        b, h, w, _ = x.shape
        n = h * w
        q, k = self._projected_qk(x)  # (B, H, W, heads, qk_dim), autocast like nn.Linear
        values = self.values(x)  # (B, heads or 1, N, head_dim)
        dtype, ldtype = compute_dtype(x), self._logit_dtype()
        scale = 1.0 / math.sqrt(self.qk_dim)
        row = col = cross = None
        enc = self.encoding
        with full_precision(x.device.type):
            # content_attention scales every score by 1/sqrt(d) inside the kernel: the learned
            # relative scores share the content's scale (reference), a batch-shared positional
            # term G enters as sqrt(d) G.
            if enc is not None and enc.query_dependent:
                row, col = enc.query_axis_logits(q.to(ldtype))  # (B, heads, H, W, H|W)
            elif enc is not None:
                row, col, cross = enc.query_key_factors(h, w)
                unscale = math.sqrt(self.qk_dim)
                row = row.to(ldtype).unsqueeze(0) * unscale
                col = col.to(ldtype).unsqueeze(0) * unscale
                cross = None if cross is None else cross.to(ldtype) * unscale
            p = self.attn_dropout.p if self._dropout_active() else 0.0
            out = content_attention(
                q.view(b, n, self.heads, self.qk_dim).transpose(1, 2).to(dtype),
                k.view(b, n, self.heads, self.qk_dim).transpose(1, 2).to(dtype),
                values.to(dtype),
                None if row is None else row.to(dtype), None if col is None else col.to(dtype),
                None if cross is None else cross.to(dtype), scale=scale, dropout=p)
        mixed = out.transpose(1, 2).reshape(b, h, w, self.heads * self.head_dim)
        y = self.out(mixed)  # (B, H, W, out_dim)
        return y, (self.attention(x) if return_attention else None)

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
