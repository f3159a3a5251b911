"""Whole networks: every convolution replaced by its self-attention equivalent (Theorem 1)."""

from __future__ import annotations

import copy
import logging
from typing import Any

from torch import nn

from attnconv.textable import plain_table as format_table  # re-exported by attnconv.theorem
from attnconv.theorem.conv_attention import ConvAttention, conv_to_attention

logger = logging.getLogger(__name__)

SUMMARY_COLUMNS = ("module", "type", "in_channels", "out_channels", "kernel_size", "stride",
                   "padding", "dilation", "groups", "padding_mode", "heads")
# Conv-like layers Theorem 1's construction does not cover; convert_model leaves them alone.
_LEFT_ALONE = (nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def conversion_summary(model: nn.Module) -> list[dict[str, Any]]:
    """One row per :class:`ConvAttention` in ``model``: name, conv hyper-parameters, heads."""
    return [m.summary(name) for name, m in model.named_modules() if isinstance(m, ConvAttention)]


def convert_model(model: nn.Module, *, inplace: bool = False,
                  alpha: float | None = None) -> nn.Module:
    """Replace every ``nn.Conv1d`` / ``nn.Conv2d`` of ``model`` by its attention equivalent.

    Args:
        model: any module (a conv itself is converted too).
        inplace: modify ``model`` instead of a deep copy.
        alpha: Gaussian width passed to :func:`~attnconv.theorem.conv_to_attention` (``None``:
            exact).

    Returns:
        The converted model; a conv shared by several parents becomes one shared
        :class:`ConvAttention`. The converted modules are logged as a table (logger
        ``attnconv.theorem.network``, level INFO); :func:`conversion_summary` lists them.
    """
    if isinstance(model, nn.Conv1d | nn.Conv2d):
        return conv_to_attention(model, alpha=alpha)
    target = model if inplace else copy.deepcopy(model)
    converted: dict[int, ConvAttention] = {}
    left: list[str] = []
    for parent_name, parent in list(target.named_modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Conv1d | nn.Conv2d):
                if id(child) not in converted:
                    converted[id(child)] = conv_to_attention(child, alpha=alpha)
                setattr(parent, name, converted[id(child)])
            elif isinstance(child, _LEFT_ALONE):
                left.append(f"{parent_name + '.' if parent_name else ''}{name} "
                            f"({type(child).__name__})")
    rows = conversion_summary(target)
    logger.info("converted %d convolution(s) to self-attention (Theorem 1):\n%s", len(rows),
                format_table(rows, SUMMARY_COLUMNS))
    if left:
        logger.warning("left unchanged (not Conv1d/Conv2d): %s", ", ".join(left))
    return target
