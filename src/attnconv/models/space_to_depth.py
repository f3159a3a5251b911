"""Invertible down-sampling (space-to-depth), the first step of the paper's network.

PAPER section 3: a 2x2 invertible down-sampling turns a 32x32x3 image into 16x16x12 tokens, so
the attention runs over 256 tokens instead of 1024 while keeping every pixel value. Each
``r x r`` block of pixels becomes one token holding its ``C * r * r`` values, ordered
channel-major like ``F.pixel_unshuffle``: ``token[i, j, c * r * r + a * r + b] =
x[c, r * i + a, r * j + b]``.
"""

from __future__ import annotations

from torch import Tensor, nn

from attnconv.errors import ShapeError


class SpaceToDepth(nn.Module):
    """``(B, C, H, W)`` images to channels-last tokens ``(B, H / r, W / r, C * r * r)``.

    Args:
        factor: block side ``r``; ``1`` only moves the channels last.
    """

    def __init__(self, factor: int = 2) -> None:
        super().__init__()
        if not isinstance(factor, int) or isinstance(factor, bool) or factor < 1:
            raise ValueError(f"factor must be a positive integer, got {factor!r}")
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        """Rearrange ``x`` ``(B, C, H, W)``; ``H`` and ``W`` must be multiples of ``r``."""
        r = self.factor
        b, c, h, w = x.shape
        if h % r or w % r:
            raise ShapeError(f"space-to-depth with factor {r} needs H and W divisible by {r}, "
                             f"got {h}x{w}; crop or pad the images to a multiple of {r}")
        x = x.reshape(b, c, h // r, r, w // r, r)  # (B, C, H/r, r, W/r, r)
        x = x.permute(0, 2, 4, 1, 3, 5)  # (B, H/r, W/r, C, r, r)
        return x.reshape(b, h // r, w // r, c * r * r)  # (B, H/r, W/r, C r r)

    def inverse(self, tokens: Tensor) -> Tensor:
        """Undo :meth:`forward`: tokens ``(B, h, w, C * r * r)`` to images ``(B, C, h r, w r)``."""
        r = self.factor
        b, h, w, d = tokens.shape
        if d % (r * r):
            raise ShapeError(f"{d} channels is not a multiple of r * r = {r * r}")
        x = tokens.reshape(b, h, w, d // (r * r), r, r)  # (B, h, w, C, r, r)
        x = x.permute(0, 3, 1, 4, 2, 5)  # (B, C, h, r, w, r)
        return x.reshape(b, d // (r * r), h * r, w * r)  # (B, C, H, W)

    def extra_repr(self) -> str:
        return f"factor={self.factor}"
