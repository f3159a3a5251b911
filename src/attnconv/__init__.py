"""attnconv: self-attention and convolutional layers (Cordonnier, Loukas, Jaggi, ICLR 2020)."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
