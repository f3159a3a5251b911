"""attnconv: self-attention and convolutional layers (Cordonnier, Loukas, Jaggi, ICLR 2020).

- :mod:`attnconv.layers`: ``SelfAttention2d`` with the paper's relative encodings.
- :mod:`attnconv.theorem`: Theorem 1 as code (``conv_to_attention``, ``convert_model``,
  ``attention_to_conv``).
- :mod:`attnconv.models`: the paper's networks (``create_model``, ``list_models``).
- :mod:`attnconv.data`, :mod:`attnconv.train`: datasets and the training recipe.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "SelfAttention2d": "attnconv.layers",
    "conv_to_attention": "attnconv.theorem",
    "convert_model": "attnconv.theorem",
    "attention_to_conv": "attnconv.theorem",
    "conversion_error": "attnconv.theorem",
    "create_model": "attnconv.models",
    "list_models": "attnconv.models",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    """Import the public API lazily so ``import attnconv`` (and the CLI) stays fast."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'attnconv' has no attribute {name!r}")
