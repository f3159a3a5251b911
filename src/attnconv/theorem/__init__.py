"""Theorem 1 as code: convolutions as multi-head self-attention, and back (PAPER section 2).

- :func:`conv_to_attention` rebuilds an ``nn.Conv2d`` / ``nn.Conv1d`` as a
  :class:`ConvAttention` (a genuine quadratic ``SelfAttention2d`` inside), exact to the dtype's
  precision; a finite ``alpha`` gives the soft version (:func:`conversion_error`).
- :func:`convert_model` converts every conv of a network; :func:`conversion_summary` lists them.
- :func:`attention_to_conv` snaps a positional-only quadratic attention layer to the nearest
  conv, with a bound on the difference.
"""

from attnconv.theorem.conv_attention import (
    SUPPORTED,
    TOLERANCES,
    ConvAttention,
    ConvGeometry,
    conv_to_attention,
    conversion_error,
    exact_alpha,
    kernel_to_head_weights,
    max_errors,
)
from attnconv.theorem.network import conversion_summary, convert_model, format_table
from attnconv.theorem.snap import HeadSnap, SnapReport, attention_to_conv, target_mass

__all__ = [
    "SUPPORTED",
    "TOLERANCES",
    "ConvAttention",
    "ConvGeometry",
    "HeadSnap",
    "SnapReport",
    "attention_to_conv",
    "conv_to_attention",
    "conversion_error",
    "conversion_summary",
    "convert_model",
    "exact_alpha",
    "format_table",
    "kernel_to_head_weights",
    "max_errors",
    "target_mass",
]
