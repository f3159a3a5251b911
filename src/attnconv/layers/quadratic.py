"""Quadratic (Gaussian) relative encodings: Lemma 2 and its non-isotropic generalisation.

Each head ``h`` attends with a Gaussian bump centred on a shift ``Delta_h`` (in pixels, as
``(row, col)``) around the query. The logits depend on the shift ``delta = k - q`` only, so the
attention is positional-only and shared by every image of a batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from attnconv.layers.base import RelativeEncoding
from attnconv.layers.grid import axis_offsets, relative_grid


@dataclass(frozen=True)
class GaussianHeads:
    """The Gaussian heads of a quadratic encoding in the paper's units.

    Attributes:
        centers: ``(heads, 2)`` attended shift ``Delta_h`` as (row, col), in pixels.
        inv_covariance: ``(heads, 2, 2)`` matrix ``Sigma_h^-1``; the logits are
            ``-1/2 (delta - Delta)^T Sigma^-1 (delta - Delta)``.
        alpha: ``(heads,)`` isotropic width ``alpha_h`` (logits ``-alpha ||delta - Delta||^2``),
            so ``Sigma^-1 = 2 alpha I``; ``None`` for full-covariance heads.
    """

    centers: Tensor
    inv_covariance: Tensor
    alpha: Tensor | None = None


class QuadraticEncoding(RelativeEncoding):
    """Isotropic Gaussian heads, ``logit_h(delta) = -alpha_h ||delta - Delta_h||^2`` (Lemma 2).

    Lemma 2 writes the same thing as ``v_h^T r_delta`` with ``r_delta = (||delta||^2, delta_1,
    delta_2)`` and ``v_h = -alpha_h (1, -2 Delta_1, -2 Delta_2)``, which equals
    ``-alpha_h (||delta - Delta_h||^2 - ||Delta_h||^2)``; the constant ``||Delta_h||^2`` does not
    change the softmax, so we compute the squared distance directly (better conditioned).

    ``alpha_h = exp(log_alpha_h)`` stays positive by construction. Initialisation (PAPER
    section 3): centres ``N(0, 2^2)`` per coordinate; widths ``sigma = 1 + N(0, 0.01^2)`` with
    ``alpha = 1 / (2 sigma^2)``, i.e. ``alpha ~ 1/2``.

    Separable (:meth:`axis_logits`) and factored (:meth:`query_key_factors`, the base class's
    broadcast of the axis logits: ``row[h, i, j, k] = -alpha (k - i - D_1)^2``, no cross term).
    """

    factored = True

    def __init__(self, heads: int, *, center_std: float = 2.0, width_std: float = 0.01) -> None:
        super().__init__()
        self.heads = heads
        self.centers = nn.Parameter(torch.randn(heads, 2) * center_std)  # (heads, 2) in pixels
        sigma = 1.0 + width_std * torch.randn(heads)
        self.log_alpha = nn.Parameter(torch.log(0.5 / sigma**2))  # (heads,)

    @property
    def alpha(self) -> Tensor:
        """Positive widths ``alpha_h``, shape ``(heads,)``."""
        return self.log_alpha.exp()

    def logits(self, height: int, width: int, query: Tensor | None = None) -> Tensor:
        """Return ``-alpha_h ||delta - Delta_h||^2`` of shape ``(heads, H, W, H, W)``."""
        d_row, d_col = relative_grid(height, width, device=self.centers.device,
                                     dtype=self.centers.dtype)
        c = self.centers.view(self.heads, 2, 1, 1, 1, 1)
        dist2 = (d_row - c[:, 0]) ** 2 + (d_col - c[:, 1]) ** 2  # (heads, H, W, H, W)
        return -self.alpha.view(self.heads, 1, 1, 1, 1) * dist2

    @property
    def separable(self) -> bool:
        """Always: the squared distance splits into a row and a column term."""
        return True

    def axis_logits(self, height: int, width: int) -> tuple[Tensor, Tensor]:
        """The separable form: row ``(heads, H, H)`` and column ``(heads, W, W)`` logits.

        ``-alpha ||delta - Delta||^2 = -alpha (delta_1 - Delta_1)^2 - alpha (delta_2 - Delta_2)^2``
        (see :mod:`attnconv.layers.separable`).
        """
        alpha = self.alpha.view(self.heads, 1, 1)
        rows = axis_offsets(height, device=self.centers.device).to(self.centers.dtype)
        cols = axis_offsets(width, device=self.centers.device).to(self.centers.dtype)
        row = -alpha * (rows - self.centers[:, 0, None, None]) ** 2  # (heads, H, H)
        col = -alpha * (cols - self.centers[:, 1, None, None]) ** 2  # (heads, W, W)
        return row, col

    def gaussian_parameters(self) -> GaussianHeads:
        """Centres, ``Sigma^-1 = 2 alpha I`` and ``alpha``, detached, in pixels."""
        alpha = self.alpha.detach()
        eye = torch.eye(2, dtype=alpha.dtype, device=alpha.device)
        return GaussianHeads(self.centers.detach().clone(), 2 * alpha.view(-1, 1, 1) * eye,
                             alpha.clone())

    @torch.no_grad()
    def set_gaussian_parameters(self, centers: Tensor, alpha: Tensor | float) -> None:
        """Set the centres ``(heads, 2)`` (pixels) and widths ``alpha > 0`` (scalar or per head)."""
        alpha_t = torch.as_tensor(alpha, dtype=self.log_alpha.dtype).expand(self.heads)
        if (alpha_t <= 0).any():
            raise ValueError(f"alpha must be positive, got {alpha_t.tolist()}")
        self.centers.copy_(torch.as_tensor(centers, dtype=self.centers.dtype))
        self.log_alpha.copy_(alpha_t.log())

    def no_weight_decay(self) -> set[str]:
        return {"centers", "log_alpha"}

    def extra_repr(self) -> str:
        return f"heads={self.heads}"


class QuadraticFullEncoding(RelativeEncoding):
    """Full-covariance Gaussian heads (PAPER section 2, non-isotropic generalisation).

    ``logit_h(delta) = -1/2 (delta - Delta_h)^T Sigma_h^-1 (delta - Delta_h)`` with
    ``Sigma_h^-1 = S_h S_h^T`` (positive semi-definite by construction). The paper writes it as
    ``v_h^T r_delta`` with ``r_delta = (delta_1, delta_2, delta_1^2, delta_2^2, delta_1 delta_2)``
    (D_p = 5), equal to ours up to a per-head constant. Initialisation: centres ``N(0, 2^2)``,
    ``S = I + N(0, 0.01^2)``.

    Factored (:meth:`query_key_factors`, exact with a rank-one cross term); separable only while
    ``Sigma^-1`` is exactly diagonal and ``S`` needs no gradient, outside ``torch.compile``
    (:attr:`separable`).
    """

    factored = True

    def __init__(self, heads: int, *, center_std: float = 2.0, s_std: float = 0.01) -> None:
        super().__init__()
        self.heads = heads
        self.centers = nn.Parameter(torch.randn(heads, 2) * center_std)  # (heads, 2) in pixels
        self.s = nn.Parameter(torch.eye(2).expand(heads, 2, 2) + s_std * torch.randn(heads, 2, 2))

    @property
    def inv_covariance(self) -> Tensor:
        """``Sigma^-1 = S S^T`` of shape ``(heads, 2, 2)``."""
        return self.s @ self.s.transpose(-1, -2)

    def logits(self, height: int, width: int, query: Tensor | None = None) -> Tensor:
        """Return ``-1/2 (delta - Delta)^T Sigma^-1 (delta - Delta)``, ``(heads, H, W, H, W)``."""
        d_row, d_col = relative_grid(height, width, device=self.centers.device,
                                     dtype=self.centers.dtype)
        c = self.centers.view(self.heads, 2, 1, 1, 1, 1)
        a = d_row - c[:, 0]  # (heads, H, 1, H, 1) row offset from the centre
        b = d_col - c[:, 1]  # (heads, 1, W, 1, W) column offset from the centre
        m = self.inv_covariance.view(self.heads, 4, 1, 1, 1, 1)
        quad = m[:, 0] * a**2 + (m[:, 1] + m[:, 2]) * a * b + m[:, 3] * b**2
        return -0.5 * quad  # (heads, H, W, H, W)

    def is_diagonal(self) -> bool:
        """True when every head's ``Sigma^-1 = S S^T`` is exactly diagonal (then separable).

        Tested bitwise: ``(S S^T)[0, 1] = s00 s10 + s01 s11 == 0`` for every head.
        """
        off = self.inv_covariance[:, 0, 1]
        return bool((off == 0).all())

    @property
    def separable(self) -> bool:
        """True when :meth:`axis_logits` is exact for the value and the gradient.

        A diagonal ``Sigma^-1`` (:meth:`is_diagonal`) gives separable values, but the gradient
        through the off-diagonal entry is not separable, so only when ``S`` needs no gradient
        (``torch.no_grad()`` or ``S`` frozen). Never on the ``meta`` device (no values), nor
        while ``torch.compile`` traces: the answer depends on the values of ``S``, on which a
        compiled graph cannot branch without a graph break, so compiled code always takes the
        exact path for any ``Sigma^-1`` (the dense one) and never needs to re-check ``S``.
        """
        if self.s.device.type == "meta" or torch.compiler.is_compiling():
            return False
        if torch.is_grad_enabled() and self.s.requires_grad:
            return False
        return self.is_diagonal()

    def axis_logits(self, height: int, width: int) -> tuple[Tensor, Tensor]:
        """Separable form for a diagonal ``Sigma^-1`` (check :meth:`is_diagonal` first).

        ``-1/2 [m00 (delta_1 - D_1)^2 + m11 (delta_2 - D_2)^2]`` as row ``(heads, H, H)`` and
        column ``(heads, W, W)`` logits. The cross term ``-m01 (delta_1 - D_1)(delta_2 - D_2)``
        is left out: exact for the value (``m01 = 0``) but not for the gradient with respect to
        ``S`` (``d logit / d m01 != 0``), so layers use it only when :attr:`separable`.
        """
        m = self.inv_covariance  # (heads, 2, 2)
        rows = axis_offsets(height, device=self.centers.device).to(self.centers.dtype)
        cols = axis_offsets(width, device=self.centers.device).to(self.centers.dtype)
        row = -0.5 * m[:, 0, 0, None, None] * (rows - self.centers[:, 0, None, None]) ** 2
        col = -0.5 * m[:, 1, 1, None, None] * (cols - self.centers[:, 1, None, None]) ** 2
        return row, col  # (heads, H, H), (heads, W, W)

    def query_key_factors(self, height: int, width: int) -> tuple[Tensor, Tensor, Tensor | None]:
        """The logits as key-row + key-column terms plus a rank-one cross term (exact).

        With ``a = k - (i + D_1)``, ``b = l - (j + D_2)`` and ``s = (m01 + m10) / 2``,
        ``-1/2 (m00 a^2 + 2 s a b + m11 b^2)``. Writing ``k' = k - (H-1)/2``, ``l' = l - (W-1)/2``
        (centred key coordinates) and ``c_i = i + D_1 - (H-1)/2``, ``c_j = j + D_2 - (W-1)/2``,
        ``a b = k' l' - k' c_j - c_i l' + c_i c_j``, so up to ``-s c_i c_j`` (constant over the
        keys, no effect on the softmax)::

            logit = [-m00 a^2 / 2 + s c_j k']  +  [-m11 b^2 / 2 + s c_i l']  +  (-s) k' l'

        Returns ``row (heads, H, W, H)``, ``col (heads, H, W, W)`` and ``cross (heads,)``, the
        coefficient of the key feature ``k' l'``.
        """
        m = self.inv_covariance  # (heads, 2, 2)
        dtype, device = self.centers.dtype, self.centers.device
        s = 0.5 * (m[:, 0, 1] + m[:, 1, 0])  # (heads,)
        k = torch.arange(height, dtype=dtype, device=device)  # key rows
        l = torch.arange(width, dtype=dtype, device=device)  # key columns
        ci = k[None, :] + self.centers[:, 0, None] - (height - 1) / 2  # (heads, H) query rows
        cj = l[None, :] + self.centers[:, 1, None] - (width - 1) / 2  # (heads, W) query cols
        kc, lc = k - (height - 1) / 2, l - (width - 1) / 2  # centred key coordinates
        h = self.heads
        a2 = (kc[None, None, :] - ci[:, :, None]) ** 2  # (heads, H(i), H(k))
        b2 = (lc[None, None, :] - cj[:, :, None]) ** 2  # (heads, W(j), W(l))
        row = (-0.5 * m[:, 0, 0, None, None, None] * a2[:, :, None, :]
               + (s[:, None] * cj)[:, None, :, None] * kc)  # (heads, H, W, H)
        col = (-0.5 * m[:, 1, 1, None, None, None] * b2[:, None, :, :]
               + (s[:, None] * ci)[:, :, None, None] * lc)  # (heads, H, W, W)
        return row.expand(h, height, width, height), col.expand(h, height, width, width), -s

    def gaussian_parameters(self) -> GaussianHeads:
        """Centres and ``Sigma^-1``, detached, in pixels."""
        return GaussianHeads(self.centers.detach().clone(), self.inv_covariance.detach().clone())

    @torch.no_grad()
    def set_gaussian_parameters(self, centers: Tensor, inv_covariance: Tensor) -> None:
        """Set centres ``(heads, 2)`` and ``Sigma^-1`` ``(heads, 2, 2)`` (must be PSD)."""
        inv_cov = torch.as_tensor(inv_covariance, dtype=self.s.dtype)
        # S = cholesky(Sigma^-1) gives S S^T = Sigma^-1; a tiny jitter admits singular matrices.
        jitter = 1e-12 * torch.eye(2, dtype=inv_cov.dtype)
        try:
            s = torch.linalg.cholesky(inv_cov + jitter)
        except RuntimeError as err:  # torch raises a generic error for non-PSD input
            raise ValueError("inv_covariance must be symmetric positive semi-definite") from err
        self.centers.copy_(torch.as_tensor(centers, dtype=self.centers.dtype))
        self.s.copy_(s)

    def no_weight_decay(self) -> set[str]:
        return {"centers", "s"}

    def extra_repr(self) -> str:
        return f"heads={self.heads}"

