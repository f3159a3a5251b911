"""A convolution rebuilt as multi-head self-attention (PAPER section 2, Theorem 1).

:func:`conv_to_attention` turns an ``nn.Conv2d`` / ``nn.Conv1d`` into a :class:`ConvAttention`:
a genuine :class:`~attnconv.layers.SelfAttention2d` with the quadratic encoding (Lemma 2), one
head per kernel offset, identity values and ``W_out`` blocks taken from the kernel. No
convolution runs inside: the output comes out of the softmax attention.

Borders and stride. The attention is "same"-sized and its softmax only covers pixels that exist,
so it cannot imitate zero padding by itself. We pad the input first (with the conv's
``padding_mode``; zero padding gives zero tokens), attend over the padded token grid and read the
output at the query pixels ``q = p * stride + anchor`` (``p`` the output position, ``anchor`` a
pixel inside the kernel footprint). Head ``h`` for the kernel tap ``(a, b)`` is centred on the
shift ``Delta_h = (a, b) * dilation - anchor``, so ``q + Delta_h = p * stride + (a, b) * dilation``
is exactly the pixel the conv reads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, overload

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnconv.errors import ShapeError
from attnconv.layers import QuadraticEncoding, SelfAttention2d
from attnconv.layers.grid import as_pair

SUPPORTED = ("torch.nn.Conv1d and torch.nn.Conv2d (any kernel size, stride, padding int/tuple/"
             "'same'/'valid', padding_mode zeros/reflect/replicate/circular, dilation, groups, "
             "bias)")

# Max relative error (see :func:`max_errors`) the exact conversion guarantees per dtype.
TOLERANCES: dict[torch.dtype, float] = {torch.float32: 1e-5, torch.float64: 1e-12}

Pair = tuple[int, int]


def exact_alpha(dtype: torch.dtype) -> float:
    """The Gaussian width ``alpha`` that makes every head's softmax exactly one-hot in ``dtype``.

    Lemma 2 on a unit pixel grid: after the softmax subtracts its maximum, the target key has
    logit 0 and a key at distance ``d`` from the head's centre has weight ``exp(-alpha d^2) <=
    exp(-alpha)`` relative to it. With ``N`` keys the off-target mass is at most
    ``(N - 1) exp(-alpha)``. Rather than sizing ``alpha`` for a given ``N`` we make *each*
    off-target weight round to exactly 0: ``tiny * eps`` is the dtype's smallest subnormal
    (2^-149 for float32, 2^-1074 for float64) and ``exp(-alpha) = tiny * eps / 4`` is below half
    of it. Then the off-target mass is exactly 0 for any number of keys and the softmax is
    bitwise one-hot: ``alpha = 104.7`` (float32), ``745.8`` (float64).
    """
    info = torch.finfo(dtype)
    return math.log(4.0) - math.log(info.tiny) - math.log(info.eps)


def max_errors(y: Tensor, reference: Tensor) -> tuple[float, float]:
    """``(max|y - ref|, max|y - ref| / max(max|ref|, tiny))``: the errors used throughout."""
    if y.shape != reference.shape:
        raise ShapeError(f"cannot compare outputs of shapes {tuple(y.shape)} and "
                         f"{tuple(reference.shape)}")
    if reference.numel() == 0:
        return 0.0, 0.0
    diff = (y.detach() - reference.detach()).abs().max().item()
    scale = max(reference.detach().abs().max().item(), torch.finfo(reference.dtype).tiny)
    return diff, diff / scale


def _grid_pair(values: Sequence[int], one_d: bool, fill: int) -> Pair:
    """A conv hyper-parameter on the 2D grid; a Conv1d's ``(L,)`` is ``(fill, L)`` (1 x L grid)."""
    return as_pair((fill, values[0]) if one_d else values)


def _check_supported(conv: nn.Module, caller: str) -> None:
    ok = isinstance(conv, nn.Conv1d | nn.Conv2d)
    # A subclass that overrides forward (quantisation-aware convs...) computes something else.
    ok = ok and type(conv).forward in (nn.Conv1d.forward, nn.Conv2d.forward)
    if not ok:
        raise NotImplementedError(f"{caller} cannot convert {type(conv).__name__}; it supports "
                                  f"{SUPPORTED}")


@dataclass(frozen=True)
class ConvGeometry:
    """The hyper-parameters of a converted convolution on a 2D grid (Conv1d: a 1 x L grid).

    Attributes:
        conv_type: ``"Conv1d"`` or ``"Conv2d"``.
        in_channels, out_channels, groups: as in the conv.
        kernel_size, stride, dilation: ``(rows, cols)``; Conv1d has one row.
        padding: ``(top, bottom, left, right)`` pixels added before attending.
        padding_mode: ``zeros``, ``reflect``, ``replicate`` or ``circular``.
        conv_padding: the conv's own ``padding`` argument (a string or a tuple), kept so that
            :func:`~attnconv.theorem.attention_to_conv` rebuilds the same conv.
        bias: whether the conv had a bias.
    """

    conv_type: str
    in_channels: int
    out_channels: int
    kernel_size: Pair
    stride: Pair
    dilation: Pair
    groups: int
    padding: tuple[int, int, int, int]
    padding_mode: str
    conv_padding: str | tuple[int, ...]
    bias: bool

    @classmethod
    def from_conv(cls, conv: nn.Conv1d | nn.Conv2d) -> ConvGeometry:
        """Read the geometry of ``conv``."""
        _check_supported(conv, "conv_to_attention")
        one_d = isinstance(conv, nn.Conv1d)
        kernel = _grid_pair(conv.kernel_size, one_d, 1)
        dilation = _grid_pair(conv.dilation, one_d, 1)
        if conv.padding == "valid":
            pads = (0, 0, 0, 0)
        elif conv.padding == "same":
            # PyTorch's split: total d (k - 1); the extra pixel of an odd total goes after.
            (tr, tc) = (d * (k - 1) for d, k in zip(dilation, kernel, strict=True))
            pads = (tr // 2, tr - tr // 2, tc // 2, tc - tc // 2)
        else:
            pr, pc = _grid_pair(conv.padding, one_d, 0)  # type: ignore[arg-type]
            pads = (pr, pr, pc, pc)
        return cls(
            conv_type="Conv1d" if one_d else "Conv2d",
            in_channels=conv.in_channels, out_channels=conv.out_channels,
            kernel_size=kernel, stride=_grid_pair(conv.stride, one_d, 1), dilation=dilation,
            groups=conv.groups, padding=pads, padding_mode=conv.padding_mode,
            conv_padding=conv.padding if isinstance(conv.padding, str) else tuple(conv.padding),
            bias=conv.bias is not None)

    @property
    def one_d(self) -> bool:
        """True for a converted ``nn.Conv1d``."""
        return self.conv_type == "Conv1d"

    @property
    def heads(self) -> int:
        """One head per kernel offset: ``K1 * K2`` (Theorem 1)."""
        return self.kernel_size[0] * self.kernel_size[1]

    @property
    def footprint(self) -> Pair:
        """Pixels the dilated kernel spans, ``dilation * (kernel - 1) + 1`` per axis."""
        return (self.dilation[0] * (self.kernel_size[0] - 1) + 1,
                self.dilation[1] * (self.kernel_size[1] - 1) + 1)

    @property
    def anchor(self) -> Pair:
        """The query pixel inside the kernel footprint (its middle), relative to its corner."""
        return ((self.footprint[0] - 1) // 2, (self.footprint[1] - 1) // 2)

    def kernel_taps(self) -> list[Pair]:
        """Kernel indices ``(a, b)`` in head order (row-major, as ``weight[..., a, b]``)."""
        return [(a, b) for a in range(self.kernel_size[0]) for b in range(self.kernel_size[1])]

    def head_offsets(self) -> list[Pair]:
        """Head centres ``Delta_h = (a, b) * dilation - anchor`` in pixels, head order."""
        (dr, dc), (ar, ac) = self.dilation, self.anchor
        return [(a * dr - ar, b * dc - ac) for a, b in self.kernel_taps()]

    def output_size(self, padded: Pair) -> Pair:
        """Output size of the conv for a padded ``(Hp, Wp)`` grid."""
        return ((padded[0] - self.footprint[0]) // self.stride[0] + 1,
                (padded[1] - self.footprint[1]) // self.stride[1] + 1)

    def conv_attrs(self) -> dict[str, Any]:
        """``kernel_size``, ``stride``, ``padding``, ``dilation`` as the conv itself shows them."""
        def native(p: Pair) -> tuple[int, ...]:
            return (p[1],) if self.one_d else p
        return {"kernel_size": native(self.kernel_size), "stride": native(self.stride),
                "padding": self.conv_padding, "dilation": native(self.dilation)}


def kernel_to_head_weights(weight: Tensor, geometry: ConvGeometry) -> Tensor:
    """``W_out`` of shape ``(C_out, heads * C_in)`` whose block ``h`` is ``W_Delta^(h)``.

    Theorem 1: ``MHSA(X)_q = b_out + sum_h X_{q + Delta_h} W^(h)`` with ``W^(h) = W_val^(h)
    W_out^(h)``; with identity values (``W_val = I``) block ``h`` of ``W_out`` is the kernel tap
    ``W_Delta^(h)``. A grouped conv gives block-diagonal blocks (zeros across groups).
    """
    c_out, c_in, heads, groups = (geometry.out_channels, geometry.in_channels, geometry.heads,
                                  geometry.groups)
    taps = weight.detach().reshape(c_out, c_in // groups, heads).transpose(1, 2)
    # taps: (C_out, heads, C_in / groups)
    blocks = weight.new_zeros(c_out, heads, c_in)
    per_group = blocks.view(c_out, heads, groups, c_in // groups).permute(0, 2, 1, 3)
    rows = torch.arange(c_out, device=weight.device)
    per_group[rows, rows // (c_out // groups)] = taps  # output o reads its own group only
    return blocks.reshape(c_out, heads * c_in)


class ConvAttention(nn.Module):
    """A drop-in replacement of a convolution computed by multi-head self-attention.

    Takes and returns the conv's layouts: ``(N, C, H, W)`` (Conv2d) or ``(N, C, L)`` (Conv1d),
    unbatched inputs too. Inside, :attr:`attention` is a positional-only quadratic
    :class:`~attnconv.layers.SelfAttention2d` over the padded channels-last token grid; build it
    with :func:`conv_to_attention`.

    Attributes:
        attention: the self-attention layer (``heads = K1 * K2``).
        geometry: the conv's hyper-parameters (:class:`ConvGeometry`).
    """

    def __init__(self, geometry: ConvGeometry, attention: SelfAttention2d) -> None:
        super().__init__()
        if attention.heads != geometry.heads or attention.dim != geometry.in_channels:
            raise ValueError(f"attention layer (dim={attention.dim}, heads={attention.heads}) "
                             f"does not fit the conv geometry (in_channels="
                             f"{geometry.in_channels}, heads={geometry.heads})")
        self.geometry = geometry
        self.attention = attention
        attrs = geometry.conv_attrs()
        # The conv's public attributes, so code that inspects a conv keeps working.
        self.in_channels, self.out_channels = geometry.in_channels, geometry.out_channels
        self.kernel_size, self.stride = attrs["kernel_size"], attrs["stride"]
        self.padding, self.dilation = attrs["padding"], attrs["dilation"]
        self.groups, self.padding_mode = geometry.groups, geometry.padding_mode

    @property
    def heads(self) -> int:
        """Number of attention heads, one per kernel offset."""
        return self.geometry.heads

    @property
    def alpha(self) -> Tensor:
        """Per-head Gaussian widths ``(heads,)`` of the quadratic encoding."""
        encoding = self.attention.encoding
        assert isinstance(encoding, QuadraticEncoding)
        return encoding.alpha.detach()

    def pad(self, x: Tensor) -> Tensor:
        """Pad ``(N, C, H, W)`` by the conv's padding, with its ``padding_mode``."""
        top, bottom, left, right = self.geometry.padding
        if not any(self.geometry.padding):
            return x
        if self.geometry.padding_mode == "zeros":
            return F.pad(x, (left, right, top, bottom))  # zero tokens
        return F.pad(x, (left, right, top, bottom), mode=self.geometry.padding_mode)

    def _check_input(self, x: Tensor) -> tuple[Tensor, bool]:
        g = self.geometry
        spatial = 1 if g.one_d else 2
        layout = "(N, C, L)" if g.one_d else "(N, C, H, W)"
        if not isinstance(x, Tensor):
            raise TypeError(f"ConvAttention expects a torch.Tensor, got {type(x).__name__}")
        unbatched = x.dim() == spatial + 1
        if x.dim() not in (spatial + 1, spatial + 2):
            raise ShapeError(f"converted {g.conv_type} expects {layout} (or unbatched) input, got "
                             f"shape {tuple(x.shape)}")
        if unbatched:
            x = x.unsqueeze(0)
        if x.shape[1] != g.in_channels:
            raise ShapeError(f"converted {g.conv_type} expects {g.in_channels} input channels "
                             f"(axis 1 of {layout}), got shape {tuple(x.shape)}")
        return x, unbatched

    @overload
    def forward(self, x: Tensor, return_attention: Literal[False] = ...) -> Tensor: ...

    @overload
    def forward(self, x: Tensor, return_attention: Literal[True]) -> tuple[Tensor, Tensor]: ...

    def forward(self, x: Tensor, return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """The conv's output, computed by attention; optionally with the attention maps.

        With ``return_attention=True`` also return the probabilities over the padded token grid,
        ``(1, heads, Hp, Wp, Hp, Wp)`` (query row, query col, key row, key col); for Conv1d
        ``Hp = 1``.
        """
        g = self.geometry
        x, unbatched = self._check_input(x)
        if g.one_d:
            x = x.unsqueeze(2)  # (N, C, 1, L): a 1 x L token grid
        x = self.pad(x)  # (N, C, Hp, Wp)
        hp, wp = x.shape[-2:]
        if hp < g.footprint[0] or wp < g.footprint[1]:
            size = f"{wp}" if g.one_d else f"{hp}x{wp}"
            kernel = f"{g.footprint[1]}" if g.one_d else f"{g.footprint[0]}x{g.footprint[1]}"
            raise ShapeError(f"padded input {size} is smaller than the (dilated) kernel "
                             f"{kernel} of the converted {g.conv_type}")
        tokens = x.permute(0, 2, 3, 1)  # (N, Hp, Wp, C) channels-last tokens
        attn: Tensor | None = None
        if return_attention:
            y, attn = self.attention(tokens, return_attention=True)  # (N, Hp, Wp, C_out)
        else:
            y = self.attention(tokens)  # (N, Hp, Wp, C_out)
        # Read the output at the strided queries q = p * stride + anchor.
        (ho, wo), (sr, sc), (ar, ac) = g.output_size((hp, wp)), g.stride, g.anchor
        y = y[:, ar:ar + (ho - 1) * sr + 1:sr, ac:ac + (wo - 1) * sc + 1:sc]  # (N, Ho, Wo, C_out)
        y = y.permute(0, 3, 1, 2)  # (N, C_out, Ho, Wo)
        if g.one_d:
            y = y.squeeze(2)  # (N, C_out, Lo)
        if unbatched:
            y = y.squeeze(0)
        y = y.contiguous()
        return y if attn is None else (y, attn)

    def summary(self, name: str = "") -> dict[str, Any]:
        """One row of :func:`~attnconv.theorem.conversion_summary` for this module."""
        g = self.geometry
        alpha = self.alpha
        return {
            "module": name or "(root)", "type": g.conv_type, "in_channels": g.in_channels,
            "out_channels": g.out_channels, **g.conv_attrs(), "groups": g.groups,
            "padding_mode": g.padding_mode, "bias": g.bias, "heads": g.heads,
            "alpha": float(alpha.min()) if alpha.numel() else float("nan"),
        }

    def extra_repr(self) -> str:
        g = self.geometry
        attrs = ", ".join(f"{k}={v}" for k, v in g.conv_attrs().items())
        return (f"{g.conv_type}({g.in_channels}, {g.out_channels}, {attrs}, groups={g.groups}, "
                f"padding_mode={g.padding_mode!r}, bias={g.bias}), heads={g.heads}")


def conv_to_attention(conv: nn.Module, *, alpha: float | None = None) -> ConvAttention:
    """Rebuild ``conv`` as self-attention (Theorem 1): same shapes, dtype, device and values.

    Args:
        conv: an ``nn.Conv2d`` or ``nn.Conv1d``.
        alpha: Gaussian width of every head (Lemma 2). ``None`` picks :func:`exact_alpha` of the
            conv's dtype (bitwise one-hot softmax, exact conversion); a finite value gives the
            soft version, whose error shrinks as ``alpha`` grows.

    Raises:
        NotImplementedError: for any other layer (``ConvTranspose*``, ``Conv3d``...).
    """
    geometry = ConvGeometry.from_conv(conv)  # type: ignore[arg-type]
    weight: Tensor = conv.weight  # type: ignore[assignment]
    alpha = exact_alpha(weight.dtype) if alpha is None else float(alpha)
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a positive finite number (or None for the exact "
                         f"conversion), got {alpha}")
    # The layer's random initialisation is overwritten; keep the caller's RNG stream untouched.
    with torch.random.fork_rng(devices=[]):
        attention = SelfAttention2d(geometry.in_channels, geometry.heads,
                                    out_dim=geometry.out_channels, encoding="quadratic",
                                    content=False)
    attention.to(device=weight.device, dtype=weight.dtype)
    assert isinstance(attention.encoding, QuadraticEncoding) and attention.value is None
    with torch.no_grad():
        # Lemma 2: head h is a Gaussian bump centred on its kernel offset Delta_h.
        centers = torch.tensor(geometry.head_offsets(), dtype=weight.dtype).view(-1, 2)
        attention.encoding.set_gaussian_parameters(centers, alpha)
        # Theorem 1: W^(h) = W_out^(h) = W_Delta^(h) (identity values), b_out = b.
        attention.out.weight.copy_(kernel_to_head_weights(weight, geometry))
        bias: Tensor | None = conv.bias  # type: ignore[assignment]
        attention.out.bias.copy_(bias.detach() if bias is not None else 0.0)
    module = ConvAttention(geometry, attention)
    module.train(conv.training)
    return module


@torch.no_grad()
def conversion_error(conv: nn.Module, x: Tensor,
                     alphas: Sequence[float | None]) -> list[dict[str, float]]:
    """Errors of the attention version of ``conv`` on ``x`` for each width ``alpha``.

    Returns one dict per alpha: ``alpha`` (the value used; ``None`` is the exact width),
    ``max_abs_error`` and ``max_rel_error`` as defined by :func:`max_errors`.
    """
    reference = conv(x)
    rows = []
    for alpha in alphas:
        module = conv_to_attention(conv, alpha=alpha)
        abs_err, rel_err = max_errors(module(x), reference)
        used = exact_alpha(reference.dtype) if alpha is None else float(alpha)
        rows.append({"alpha": used, "max_abs_error": abs_err,
                     "max_rel_error": rel_err})
    return rows
