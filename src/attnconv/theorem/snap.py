"""From attention back to a convolution: snap every Gaussian head to its nearest pixel shift.

The converse reading of Theorem 1. A positional-only quadratic head ``h`` (Lemma 2) puts mass
``m_h`` on the pixel ``q + s_h``, ``s_h = round(Delta_h)``, and ``1 - m_h`` elsewhere. Replacing
it by a one-hot head gives the conv ``y_conv(X)_q = b + sum_h X_{q + s_h} W^(h)`` with
``W^(h) = W_val^(h) W_out^(h)``; heads that snap to the same shift add their matrices.

Bound. With ``p_h`` the head's softmax at query ``q`` and ``t = q + s_h``,
``y_att - y_conv = sum_h sum_{k != t} p_hk (X_k - X_t) W^(h)``, hence, entrywise,

    |y_att - y_conv|_q <= sum_h 2 (1 - m_h) ||W^(h)||_(inf->inf) max|X|

wherever every target ``q + s_h`` exists. ``||W||_(inf->inf)`` is the largest absolute row sum of
the ``(C_out, C_in)`` matrix acting on a pixel. ``m_h`` is computed for a query far from any
border (infinitely large grid): a border query sees fewer keys, so its target mass is at least
``m_h`` and the bound holds for it too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from attnconv.layers import QuadraticEncoding, SelfAttention2d
from attnconv.theorem.conv_attention import ConvAttention, ConvGeometry

Pair = tuple[int, int]

# Far keys on one axis weigh exp(-alpha (k^2 - k)) relative to the target (|s - c| <= 1/2, k the
# distance to s); past alpha (k^2 - k) >= 800 they are below float64's smallest subnormal.
_TAIL_EXPONENT = 800.0
_MAX_RADIUS = 1_000_000


@dataclass(frozen=True)
class HeadSnap:
    """How one head was snapped.

    Attributes:
        head: head index.
        center: the Gaussian centre ``Delta_h`` (row, col), pixels.
        offset: the snapped shift ``s_h = round(Delta_h)``.
        alpha: the head's width (Lemma 2).
        mass: attention on ``q + s_h`` for an interior query, ``m_h``.
        off_mass: ``1 - m_h``, computed without cancellation.
        weight_norm: ``||W^(h)||_(inf->inf)``, the largest absolute row sum of ``W^(h)``.
    """

    head: int
    center: tuple[float, float]
    offset: Pair
    alpha: float
    mass: float
    off_mass: float
    weight_norm: float

    @property
    def bound_factor(self) -> float:
        """``2 (1 - m_h) ||W^(h)||``: this head's share of the bound per unit of ``max|X|``."""
        return 2.0 * self.off_mass * self.weight_norm


@dataclass(frozen=True)
class SnapReport:
    """What :func:`attention_to_conv` did and how far the conv is from the attention.

    Attributes:
        heads: one :class:`HeadSnap` per head.
        kernel_size: kernel of the returned conv.
        margin: ``(top, bottom, left, right)`` output rows/columns of a bare attention layer
            where some snapped target falls outside the image; the bound holds elsewhere. All
            zero for a :class:`ConvAttention` (its padded grid holds every target).
        notes: anything the caller should know (heads sharing a shift, groups dropped).
    """

    heads: tuple[HeadSnap, ...]
    kernel_size: tuple[int, ...]
    margin: tuple[int, int, int, int]
    notes: tuple[str, ...] = ()

    @property
    def bound_factor(self) -> float:
        """``sum_h 2 (1 - m_h) ||W^(h)||``."""
        return sum(h.bound_factor for h in self.heads)

    def bound(self, max_abs_input: float) -> float:
        """Bound on ``max|y_attention - y_conv|`` for inputs with ``max|X| <= max_abs_input``."""
        return self.bound_factor * max_abs_input

    def rows(self) -> list[dict[str, Any]]:
        """One dict per head (for printing with :func:`~attnconv.theorem.format_table`)."""
        return [{"head": h.head, "center": f"({h.center[0]:+.3f}, {h.center[1]:+.3f})",
                 "offset": h.offset, "alpha": h.alpha, "mass": h.mass, "1 - mass": h.off_mass,
                 "||W||": h.weight_norm, "bound / max|x|": h.bound_factor} for h in self.heads]


def _axis_weights(center: float, alpha: float, snapped: int) -> float:
    """``sum_{i != s} exp(-alpha ((i - c)^2 - (s - c)^2))``: one axis, relative to the target."""
    shift = (snapped - center) ** 2
    radius = math.ceil(0.5 + math.sqrt(0.25 + _TAIL_EXPONENT / alpha)) + 1
    if radius > _MAX_RADIUS:
        # Very wide head: the sum equals the Gaussian integral sqrt(pi / alpha) up to terms of
        # relative size exp(-pi^2 / alpha) (Poisson summation), which vanish here.
        return math.sqrt(math.pi / alpha) * math.exp(alpha * shift) - 1.0
    i = torch.arange(snapped - radius, snapped + radius + 1, dtype=torch.float64)
    w = torch.exp(-alpha * ((i - center) ** 2 - shift))
    w[radius] = 0.0  # the target i = s itself
    return float(w.sum())


def target_mass(center: tuple[float, float], alpha: float, offset: Pair) -> tuple[float, float]:
    """``(m, 1 - m)`` of a Gaussian head for a query far from any border (Lemma 2).

    The isotropic softmax factorises over rows and columns: ``m = 1 / (Z_r Z_c)`` with each
    ``Z`` summed relative to the target, so ``1 - m = (r + c + r c) / ((1 + r)(1 + c))`` where
    ``r, c`` are the off-target sums of each axis (no cancellation when ``m ~ 1``).
    """
    r = _axis_weights(center[0], alpha, offset[0])
    c = _axis_weights(center[1], alpha, offset[1])
    total = (1.0 + r) * (1.0 + c)
    return 1.0 / total, (r + c + r * c) / total


def _head_matrices(layer: SelfAttention2d) -> tuple[Tensor, Tensor]:
    """``W^(h) = W_val^(h) W_out^(h)`` as ``(heads, C_out, C_in)`` and the conv bias ``(C_out,)``.

    A value bias ``b_val`` passes through the attention unchanged (the weights sum to 1), so it
    adds ``W_out^(h) b_val^(h)`` to the output bias.
    """
    heads, d_h = layer.heads, layer.head_dim
    w_out = layer.out.weight.detach().view(layer.out_dim, heads, d_h).transpose(0, 1)
    bias = layer.out.bias.detach().clone()  # (C_out,)
    if layer.value is None:
        return w_out, bias  # W_val = I (head_dim == dim); w_out: (heads, C_out, C_in)
    w_val = layer.value.weight.detach().view(heads, d_h, layer.dim)  # (heads, D_h, C_in)
    b_val = layer.value.bias.detach().view(heads, d_h, 1)
    bias = bias + (w_out @ b_val).sum(dim=0).squeeze(-1)
    return w_out @ w_val, bias  # (heads, C_out, C_in)


def _snap_heads(layer: SelfAttention2d, matrices: Tensor) -> tuple[list[HeadSnap], list[str]]:
    params = layer.gaussian_parameters()
    assert params.alpha is not None
    centers = params.centers.double().cpu()
    offsets = torch.round(centers).long()
    norms = matrices.abs().sum(dim=-1).amax(dim=-1).double().cpu()  # (heads,) max row sum
    snaps = []
    for h in range(layer.heads):
        center = (float(centers[h, 0]), float(centers[h, 1]))
        offset = (int(offsets[h, 0]), int(offsets[h, 1]))
        alpha = float(params.alpha[h])
        mass, off = target_mass(center, alpha, offset)
        snaps.append(HeadSnap(h, center, offset, alpha, mass, off, float(norms[h])))
    shared: dict[Pair, list[int]] = {}
    for s in snaps:
        shared.setdefault(s.offset, []).append(s.head)
    notes = [f"heads {heads} snap to the same offset {offset}: their matrices add"
             for offset, heads in shared.items() if len(heads) > 1]
    return snaps, notes


def _check_layer(layer: SelfAttention2d) -> None:
    if layer.content or not isinstance(layer.encoding, QuadraticEncoding):
        raise NotImplementedError(
            f"attention_to_conv needs a positional-only isotropic quadratic SelfAttention2d "
            f"(encoding='quadratic', content=False) or a ConvAttention; got "
            f"encoding={layer.encoding_name!r}, content={layer.content}")


def _new_conv(cls: type[nn.Module], like: Tensor, **kwargs: Any) -> Any:
    with torch.random.fork_rng(devices=[]):  # weights are overwritten: leave the RNG alone
        return cls(**kwargs).to(device=like.device, dtype=like.dtype)


def _snap_converted(module: ConvAttention) -> tuple[nn.Conv1d | nn.Conv2d, SnapReport]:
    g: ConvGeometry = module.geometry
    layer = module.attention
    _check_layer(layer)
    matrices, bias = _head_matrices(layer)
    snaps, notes = _snap_heads(layer, matrices)
    # Invert Delta_h = (a, b) * dilation - anchor; each head must land on a kernel tap.
    taps = []
    for s in snaps:
        tap = []
        for axis in range(2):
            pos = s.offset[axis] + g.anchor[axis]
            a, rem = divmod(pos, g.dilation[axis])
            if rem or not 0 <= a < g.kernel_size[axis]:
                raise ValueError(
                    f"head {s.head} snaps to offset {s.offset}, which is not a tap of the "
                    f"converted {g.conv_type}'s {g.kernel_size} kernel (dilation {g.dilation}); "
                    f"use attention_to_conv(module.attention) for the stride-1 conv on the "
                    f"padded token grid")
            tap.append(a)
        taps.append((tap[0], tap[1]))
    c_out, c_in = g.out_channels, g.in_channels
    groups = g.groups
    rows = torch.arange(c_out, device=matrices.device)
    in_group = (torch.arange(c_in, device=matrices.device) // (c_in // groups)
                == (rows // (c_out // groups))[:, None])  # (C_out, C_in) block-diagonal mask
    if groups > 1 and bool((matrices[:, ~in_group] != 0).any()):
        notes.append(f"W^(h) is not block-diagonal over the {groups} groups: returning groups=1")
        groups = 1
    c_in_g = c_in // groups
    weight = matrices.new_zeros(c_out, c_in_g, *g.kernel_size)
    for s, (a, b) in zip(snaps, taps, strict=True):
        w = matrices[s.head]  # (C_out, C_in)
        if groups > 1:  # keep each output's own group: (C_out, C_in / groups)
            w = w.view(c_out, groups, c_in_g)[rows, rows // (c_out // groups)]
        weight[:, :, a, b] += w
    has_bias = g.bias or bool((bias != 0).any())
    attrs = g.conv_attrs()
    cls = nn.Conv1d if g.one_d else nn.Conv2d
    conv = _new_conv(cls, weight, in_channels=c_in, out_channels=c_out, groups=groups,
                     bias=has_bias, padding_mode=g.padding_mode, **attrs)
    with torch.no_grad():
        conv.weight.copy_(weight[:, :, 0, :] if g.one_d else weight)
        if has_bias:
            conv.bias.copy_(bias)
    report = SnapReport(tuple(snaps), tuple(attrs["kernel_size"]), (0, 0, 0, 0), tuple(notes))
    return conv, report


def _snap_attention(layer: SelfAttention2d) -> tuple[nn.Conv2d, SnapReport]:
    _check_layer(layer)
    matrices, bias = _head_matrices(layer)
    snaps, notes = _snap_heads(layer, matrices)
    offsets = torch.tensor([s.offset for s in snaps]).view(-1, 2)  # (heads, 2)
    # A symmetric kernel of radius P per axis covers every shift; padding P keeps H x W.
    radius = offsets.abs().amax(dim=0).tolist()
    kernel = (2 * radius[0] + 1, 2 * radius[1] + 1)
    weight = matrices.new_zeros(layer.out_dim, layer.dim, *kernel)
    for s in snaps:
        weight[:, :, s.offset[0] + radius[0], s.offset[1] + radius[1]] += matrices[s.head]
    conv = _new_conv(nn.Conv2d, weight, in_channels=layer.dim, out_channels=layer.out_dim,
                     kernel_size=kernel, padding=tuple(radius))
    with torch.no_grad():
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
    low, high = offsets.amin(dim=0).tolist(), offsets.amax(dim=0).tolist()
    margin = (max(0, -low[0]), max(0, high[0]), max(0, -low[1]), max(0, high[1]))
    return conv, SnapReport(tuple(snaps), kernel, margin, tuple(notes))


def attention_to_conv(layer: nn.Module) -> tuple[nn.Conv1d | nn.Conv2d, SnapReport]:
    """Snap a positional-only quadratic attention layer to the nearest convolution.

    Args:
        layer: a :class:`ConvAttention` (from :func:`~attnconv.theorem.conv_to_attention`,
            possibly trained) or a ``SelfAttention2d(encoding="quadratic", content=False)``.

    Returns:
        ``(conv, report)``. For a ``ConvAttention`` the conv has the original type, stride,
        padding, padding mode, dilation and groups, so conv -> attention -> conv returns the
        original conv exactly. For a bare ``SelfAttention2d`` it is a stride-1 ``nn.Conv2d``
        with the smallest odd kernel covering every snapped shift and zero padding that keeps
        the ``H x W`` size (equal to the attention away from ``report.margin``).
        ``report.bound(max|x|)`` bounds ``max|y_attention - y_conv|`` (see the module docstring).

    Raises:
        NotImplementedError: content attention or a non-quadratic encoding.
        ValueError: a ``ConvAttention`` head that no longer snaps onto a kernel tap.
    """
    if isinstance(layer, ConvAttention):
        return _snap_converted(layer)
    if isinstance(layer, SelfAttention2d):
        return _snap_attention(layer)
    raise NotImplementedError(f"attention_to_conv supports ConvAttention and positional-only "
                              f"quadratic SelfAttention2d layers, got {type(layer).__name__}")
