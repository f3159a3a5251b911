"""Batched tensor transforms: normalisation and the paper's training augmentation.

Augmentation (paper sec. 3): random crop of the original size from the image zero-padded by
4 pixels on each side, then a horizontal flip with probability 1/2. It runs on whole
batches with two ``gather`` calls (:func:`crop_flip`), next to the readable per-image
version it must agree with (:func:`crop_flip_reference`). Apply it to the raw pixels, before
:func:`normalize`, so the padding is black as in torchvision's ``RandomCrop(32, padding=4)``.
All randomness comes from the ``torch.Generator`` passed in.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """``(x / 255 - mean) / std`` for uint8 input, ``(x - mean) / std`` for float in [0, 1].

    Args:
        images: ``(B, C, H, W)`` or ``(C, H, W)``, uint8 or floating.
        mean, std: ``C`` per-channel values for pixels in [0, 1].

    Returns:
        float32 tensor of the same shape, on the same device.
    """
    std_t = torch.tensor(std, dtype=torch.float32, device=images.device).view(-1, 1, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=images.device).view(-1, 1, 1)
    scale = 1.0 / (255.0 * std_t) if images.dtype == torch.uint8 else 1.0 / std_t
    return images.to(torch.float32) * scale - mean_t / std_t  # one pass: x*scale + shift


def draw_crop_flip(
    batch: int, generator: torch.Generator | None, pad: int = 4, flip: bool = True
) -> tuple[Tensor, Tensor]:
    """Draw the random parameters of :func:`crop_flip` for ``batch`` images.

    Returns:
        ``offsets`` ``(B, 2)`` int64, the top-left corner (row, column) of each crop in the
        padded image, uniform in ``[0, 2 * pad]``; ``flips`` ``(B,)`` bool.
    """
    offsets = torch.randint(0, 2 * pad + 1, (batch, 2), generator=generator)
    if flip:
        flips = torch.rand(batch, generator=generator) < 0.5
    else:
        flips = torch.zeros(batch, dtype=torch.bool)
    return offsets, flips


def crop_flip(images: Tensor, offsets: Tensor, flips: Tensor, pad: int = 4) -> Tensor:
    """Crop each zero-padded image at its offset and mirror the flagged ones (fast path).

    Args:
        images: ``(B, C, H, W)`` of any dtype.
        offsets: ``(B, 2)`` crop corners in the padded image, in ``[0, 2 * pad]``.
        flips: ``(B,)`` bool, mirror left-right after cropping.

    Returns:
        ``(B, C, H, W)``, same dtype and device.
    """
    B, C, H, W = images.shape
    offsets = offsets.to(images.device)
    flips = flips.to(images.device)
    padded = F.pad(images, (pad, pad, pad, pad))  # (B, C, H+2p, W+2p), zeros outside
    ar_h = torch.arange(H, device=images.device)
    ar_w = torch.arange(W, device=images.device)
    rows = offsets[:, :1] + ar_h  # (B, H)
    cols = offsets[:, 1:] + torch.where(flips[:, None], ar_w.flip(0), ar_w)  # (B, W)
    out = padded.gather(2, rows[:, None, :, None].expand(B, C, H, W + 2 * pad))  # (B,C,H,W+2p)
    return out.gather(3, cols[:, None, None, :].expand(B, C, H, W))  # (B, C, H, W)


def crop_flip_reference(image: Tensor, row: int, col: int, flip: bool, pad: int = 4) -> Tensor:
    """Reference for :func:`crop_flip` on one ``(C, H, W)`` image: pad, slice, maybe mirror."""
    _, H, W = image.shape
    out = F.pad(image, (pad, pad, pad, pad))[:, row:row + H, col:col + W]
    return out.flip(-1) if flip else out


def augment_batch(
    images: Tensor, generator: torch.Generator | None, pad: int = 4, flip: bool = True
) -> Tensor:
    """Random crop with zero padding ``pad`` and random horizontal flip of a batch.

    Args:
        images: ``(B, C, H, W)``, raw pixels (uint8 or float), on any device.
        generator: CPU ``torch.Generator`` the crops and flips are drawn from (None: torch's
            global generator); the same seed gives the same augmentation.
        pad: zero padding on each side; 0 disables cropping.
        flip: whether to flip half of the images left-right.

    Returns:
        ``(B, C, H, W)`` augmented images, same dtype and device.
    """
    offsets, flips = draw_crop_flip(images.shape[0], generator, pad, flip)
    return crop_flip(images, offsets, flips, pad)
