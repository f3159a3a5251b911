"""Mixed precision for the attention layers: what runs in the autocast dtype, what stays fp32.

Under ``torch.autocast`` (bf16 or fp16, CPU or GPU) the large matrix products of a layer run in
the autocast dtype, as ``nn.Linear`` does. The numerically sensitive parts stay in float32:
the Gaussian parameters and the logits built from them, the learned positional scores, the
softmax and its normaliser. The layers compute those inside :func:`full_precision` blocks from
float32 inputs and cast the resulting probabilities to the compute dtype only when they enter
a matrix product.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast uses on ``device_type`` right now, or ``None`` when it is off."""
    try:
        if not torch.is_autocast_enabled(device_type):
            return None
        return torch.get_autocast_dtype(device_type)
    except (TypeError, RuntimeError, AttributeError):  # torch < 2.4, or an unknown device type
        if device_type == "cpu" and torch.is_autocast_cpu_enabled():
            return torch.get_autocast_cpu_dtype()
        if device_type == "cuda" and torch.is_autocast_enabled():
            return torch.get_autocast_gpu_dtype()
        return None


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype the matrix products of a layer run in for input ``x``.

    The autocast dtype when autocast is on for ``x``'s device (and ``x`` is floating point),
    else ``x.dtype``.
    """
    if not x.is_floating_point():
        return x.dtype
    return autocast_dtype(x.device.type) or x.dtype


def full_precision(device_type: str) -> contextlib.AbstractContextManager[object]:
    """A block where autocast is off on ``device_type`` (ops run in their inputs' dtype)."""
    if autocast_dtype(device_type) is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, enabled=False)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for the reduced-precision dtypes, else ``dtype`` (gradient accumulators)."""
    return torch.promote_types(dtype, torch.float32)
