"""Parameter and multiply-accumulate (MAC) counts, in two conventions (PAPER section 4).

* **All ops** (:attr:`ComputeCost.macs`): every matrix product of one forward pass, counted by
  ``torch.utils.flop_counter.FlopCounterMode``: linear layers (``addmm``/``mm``), convolutions
  and the attention products (``einsum``/``matmul`` reach it as ``bmm``: the logits ``q . k``,
  the query-dependent positional scores and the probability-weighted sum of the values).
  The flop counter reports FLOPs = 2 x MACs for every product; we divide by 2. It has no
  formula for ``mv``, ``dot``, ``vdot``, ``addmv`` and ``addbmm``; :data:`EXTRA_FLOP_FORMULAS`
  supplies them (:attr:`ComputeCost.extra_formula_ops` lists any that fired; none does in the
  registered models). Elementwise work (softmax, LayerNorm, GELU, the Gaussian logits, batch
  norm) has no multiply-accumulate formula and is not counted; :attr:`ComputeCost.uncounted_ops`
  names those ops.
* **The paper's convention** (:attr:`ComputeCost.paper_convention_flops`): the linear layers
  only (``nn.Linear`` modules, plus ``nn.Conv*d`` for the ResNet), counted with forward hooks and
  reported as 2 x MACs. This reproduces Table 1 (6.2B, 6.2B, 15B for the self-attention
  models, 1.1B for ResNet18); the attention products (~1.4 GMAC per image and model,
  :attr:`ComputeCost.attention_macs`) are not part of it.

Positional-only attention has an exact fast path in eval mode (separable row/column softmax,
:mod:`attnconv.layers.separable`). By default (``attention="reference"``) we count the dense
reference computation, the paper's operator with its ``(HW)^2`` attention products;
``attention="fast"`` counts what the layers actually run in eval mode.

Counting runs one image (batch 1) in eval mode under ``torch.no_grad()``. On the ``meta``
device (the default of :func:`model_cost`) nothing is computed, only shapes propagate: the six
full-size Table 1 models take about 0.1 s each after a one-time ~1.5 s warm-up (torch loads its
Python meta kernels lazily), against 0.7-2 s each for a real CPU forward pass; counts agree.
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from attnconv.layers import attention as attention_module
from attnconv.models import create_model

ATTENTION_MODES = ("reference", "fast")

aten = torch.ops.aten


# --------------------------------------------------------------------------------------------
# Formulas for product ops the flop counter lacks (FLOPs = 2 x MACs, its convention)
# --------------------------------------------------------------------------------------------
def _mv_flop(a_shape: Sequence[int], b_shape: Sequence[int], *args: Any, **kwargs: Any) -> int:
    m, k = a_shape  # (M, K) @ (K,)
    return 2 * m * k


def _addmv_flop(self_shape: Sequence[int], a_shape: Sequence[int], b_shape: Sequence[int],
                *args: Any, **kwargs: Any) -> int:
    return _mv_flop(a_shape, b_shape)


def _dot_flop(a_shape: Sequence[int], b_shape: Sequence[int], *args: Any, **kwargs: Any) -> int:
    return 2 * a_shape[0]  # (K,) . (K,)


def _addbmm_flop(self_shape: Sequence[int], a_shape: Sequence[int], b_shape: Sequence[int],
                 *args: Any, **kwargs: Any) -> int:
    b, m, k = a_shape  # sum_b (B, M, K) @ (B, K, N)
    return 2 * b * m * k * b_shape[-1]


EXTRA_FLOP_FORMULAS: dict[Any, Callable[..., int]] = {
    op: formula for op, formula in {
        aten.mv: _mv_flop, aten.addmv: _addmv_flop, aten.dot: _dot_flop,
        aten.vdot: _dot_flop, aten.addbmm: _addbmm_flop,
    }.items() if op not in flop_registry  # only where torch has none
}
"""Flop formulas attnconv adds to ``FlopCounterMode`` for products it does not count."""


# Ops that only move or index data: never reported as "uncounted arithmetic".
_DATA_MOVEMENT_OPS = frozenset({
    "aten._to_copy", "aten._unsafe_view", "aten.alias", "aten.arange", "aten.as_strided",
    "aten.clone", "aten.contiguous", "aten.copy_", "aten.detach", "aten.empty", "aten.expand",
    "aten.index", "aten.lift_fresh", "aten.permute", "aten.reshape", "aten.select",
    "aten.slice", "aten.split", "aten.split_with_sizes", "aten.squeeze", "aten.t",
    "aten.transpose", "aten.unbind", "aten.unsqueeze", "aten.view", "aten.zeros",
})


class _OpRecorder(TorchDispatchMode):
    """Record the name of every aten op that runs (to report what the counter skipped)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[Any] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        self.ops[func.overloadpacket] += 1
        return func(*args, **(kwargs or {}))


# --------------------------------------------------------------------------------------------
# Counting
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ComputeCost:
    """Size and per-image cost of a model at one input shape.

    Attributes:
        params: number of parameters.
        macs: multiply-accumulates of all matrix products (flop counter FLOPs / 2).
        linear_macs: MACs of the ``nn.Linear`` and convolution modules only.
        by_op: MACs per aten op, e.g. ``{"aten.addmm": ..., "aten.bmm": ...}``.
        extra_formula_ops: ops counted with :data:`EXTRA_FLOP_FORMULAS` (empty: torch's own
            formulas covered every product).
        uncounted_ops: arithmetic ops that ran without a flop formula (softmax, LayerNorm,
            GELU, elementwise, reductions); pure data movement (views, copies) is left out.
    """

    params: int
    macs: int
    linear_macs: int
    by_op: dict[str, int] = field(default_factory=dict)
    extra_formula_ops: tuple[str, ...] = ()
    uncounted_ops: tuple[str, ...] = ()

    @property
    def attention_macs(self) -> int:
        """MACs outside the linear/conv layers: the attention products."""
        return self.macs - self.linear_macs

    @property
    def paper_convention_flops(self) -> int:
        """The paper's FLOPs: 2 x MACs of the linear (and conv) layers only."""
        return 2 * self.linear_macs


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (shared ones once); works on the ``meta`` device."""
    return sum(p.numel() for p in model.parameters())


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _linear_layer_macs(module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> int:
    if isinstance(module, nn.Linear):
        return (inputs[0].numel() // module.in_features) * module.in_features \
            * module.out_features
    if isinstance(module, _CONVS):
        kernel = math.prod(module.kernel_size)
        return output.numel() * (module.in_channels // module.groups) * kernel
    return 0


def _attention_algorithm(attention: str) -> contextlib.AbstractContextManager[Any]:
    """Context forcing the dense reference attention, or leaving the layers' choice."""
    if attention not in ATTENTION_MODES:
        raise ValueError(f"attention must be one of {', '.join(ATTENTION_MODES)}, "
                         f"got {attention!r}")
    force_reference = getattr(attention_module, "reference_attention", None)
    if attention == "reference" and force_reference is not None:
        return force_reference()
    return contextlib.nullcontext()  # layers without fast paths always run the reference


def count_macs(model: nn.Module, image_shape: Sequence[int] = (3, 32, 32), *,
               attention: str = "reference") -> ComputeCost:
    """Count the MACs of one forward pass on one image ``(C, H, W)``, both conventions.

    The image is created on the device of the model's parameters (``meta`` works: shapes only).
    The model runs in eval mode under ``torch.no_grad()``; its training flag is restored.
    ``attention="reference"`` counts the dense attention of the paper's operator,
    ``"fast"`` the exact fast path the layers pick in eval mode.
    """
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    x = torch.zeros(1, *image_shape, device=device)  # (1, C, H, W)

    linear = [0]

    def hook(module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        linear[0] += _linear_layer_macs(module, inputs, output)

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Linear, *_CONVS))]
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False, custom_mapping=EXTRA_FLOP_FORMULAS)
    recorder = _OpRecorder()
    try:
        with torch.no_grad(), _attention_algorithm(attention), counter, recorder:
            model(x)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)

    flops = counter.get_flop_counts().get("Global", {})
    by_op = {str(op): count // 2 for op, count in flops.items()}
    extra = tuple(sorted(str(op) for op in flops if op in EXTRA_FLOP_FORMULAS))
    uncounted = tuple(sorted({str(op) for op in recorder.ops}
                             - {str(op) for op in flops} - _DATA_MOVEMENT_OPS))
    return ComputeCost(params=count_parameters(model), macs=sum(by_op.values()),
                       linear_macs=linear[0], by_op=by_op, extra_formula_ops=extra,
                       uncounted_ops=uncounted)


def model_cost(name: str, *, device: str | torch.device = "meta", attention: str = "reference",
               num_classes: int = 10, in_chans: int = 3, image_size: int | tuple[int, int] = 32,
               **overrides: Any) -> ComputeCost:
    """Build the registry model ``name`` on ``device`` and count it at ``image_size``.

    The default ``meta`` device allocates nothing and computes nothing, so counting a
    full-size model takes about 0.1 s; pass ``device="cpu"`` to run a real forward pass instead
    (same counts). ``attention`` is passed to :func:`count_macs`.
    """
    with torch.device(device):
        model = create_model(name, num_classes=num_classes, in_chans=in_chans,
                             image_size=image_size, **overrides)
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    return count_macs(model, (in_chans, height, width), attention=attention)


def format_count(value: float, digits: int = 3) -> str:
    """``value`` rounded to ``digits`` significant digits with a K/M/B suffix.

    ``format_count(6_175_948_800, 2) == "6.2B"``, ``format_count(15.02e9, 2) == "15B"``,
    ``format_count(12_086_844) == "12.1M"`` (the paper's notation).
    """
    if value == 0:
        return "0"
    rounded = float(f"{value:.{digits}g}")  # significant-digit rounding first (999.96K -> 1M)
    for suffix, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3), ("", 1.0)):
        if abs(rounded) >= scale or scale == 1.0:
            scaled = rounded / scale
            decimals = max(digits - 1 - math.floor(math.log10(abs(scaled))), 0)
            return f"{scaled:.{decimals}f}{suffix}"
    raise AssertionError("unreachable")  # pragma: no cover
