"""Self-attention layers with the paper's relative positional encodings."""

from attnconv.layers.attention import (
    ENCODINGS,
    SelfAttention2d,
    attention_impl,
    reference_attention,
)
from attnconv.layers.base import RelativeEncoding
from attnconv.layers.grid import axis_offsets, relative_grid
from attnconv.layers.learned import LearnedRelativeEncoding
from attnconv.layers.quadratic import GaussianHeads, QuadraticEncoding, QuadraticFullEncoding

__all__ = [
    "ENCODINGS",
    "GaussianHeads",
    "LearnedRelativeEncoding",
    "QuadraticEncoding",
    "QuadraticFullEncoding",
    "RelativeEncoding",
    "SelfAttention2d",
    "attention_impl",
    "axis_offsets",
    "reference_attention",
    "relative_grid",
]
