"""ResNet18 for CIFAR, the paper's convolutional baseline (PAPER sections 3-4, Table 1).

The CIFAR variant of He et al. (2016): a 3x3 stem convolution with 64 channels and batch norm,
no max-pool, four stages of two basic blocks (64, 128, 256, 512 channels; stages 2-4 halve the
resolution), 1x1 projection shortcuts where the shape changes, global average pooling and a
linear classifier. 11,173,962 parameters at CIFAR-10 shape (Table 1: 11.2M).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from attnconv.errors import ConfigError
from attnconv.models.base import ImageClassifier
from attnconv.models.registry import make_config, register_model


@dataclass
class ResNetConfig:
    """Sizes of the CIFAR ResNet; the defaults are ResNet18 for CIFAR-10."""

    num_classes: int = 10
    in_chans: int = 3
    image_size: int | tuple[int, int] = 32  # informative only: any input size works
    base_width: int = 64  # channels of the stem and first stage; stage i has base_width * 2^i
    blocks: tuple[int, ...] = (2, 2, 2, 2)  # basic blocks per stage

    def __post_init__(self) -> None:
        self.blocks = tuple(self.blocks)
        if isinstance(self.image_size, list):
            self.image_size = (int(self.image_size[0]), int(self.image_size[1]))
        for name in ("num_classes", "in_chans", "base_width"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        sides = ((self.image_size,) if isinstance(self.image_size, int)
                 else tuple(self.image_size))
        if len(sides) not in (1, 2) or not all(isinstance(s, int) and s >= 1 for s in sides):
            raise ConfigError(f"image_size must be a positive int or (H, W), "
                              f"got {self.image_size!r}")
        if not self.blocks or not all(isinstance(n, int) and n >= 1 for n in self.blocks):
            raise ConfigError(f"blocks must be positive integers, one per stage, got "
                              f"{self.blocks!r} (ResNet18: (2, 2, 2, 2))")

    @property
    def widths(self) -> tuple[int, ...]:
        """Channels of each stage."""
        return tuple(self.base_width * 2**i for i in range(len(self.blocks)))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection: ``relu(F(x) + shortcut(x))``."""

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != channels:  # 1x1 projection shortcut
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(channels))

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C_in, H, W)`` to ``(B, C, H / stride, W / stride)``."""
        y = F.relu(self.bn1(self.conv1(x)))  # (B, C, H/s, W/s)
        y = self.bn2(self.conv2(y))  # (B, C, H/s, W/s)
        return F.relu(y + self.shortcut(x))  # (B, C, H/s, W/s)


class ResNet(ImageClassifier):
    """CIFAR ResNet with basic blocks, sized by :class:`ResNetConfig`.

    :meth:`forward_features` returns the last stage's feature map ``(B, C, H / 8, W / 8)``
    (channels-first, for four stages); :meth:`forward_head` pools it globally and classifies.
    """

    def __init__(self, config: ResNetConfig) -> None:
        super().__init__()
        self.config = config
        self.in_chans, self.num_classes = config.in_chans, config.num_classes
        widths = config.widths
        self.stem = nn.Sequential(  # 3x3 stem, no max-pool (CIFAR variant)
            nn.Conv2d(config.in_chans, widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True))
        stages = []
        in_channels = widths[0]
        for i, (width, depth) in enumerate(zip(widths, config.blocks, strict=True)):
            blocks = [BasicBlock(in_channels, width, stride=1 if i == 0 else 2)]
            blocks += [BasicBlock(width, width, stride=1) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
            in_channels = width
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(in_channels, config.num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        """Images ``(B, C, H, W)`` to the last feature map ``(B, C_last, h, w)``."""
        self.check_images(x)
        x = self.stem(x)  # (B, 64, H, W)
        return self.stages(x)  # (B, 512, H/8, W/8)

    def forward_head(self, features: Tensor) -> Tensor:
        """Global average pool and linear classifier: ``(B, C, h, w)`` to ``(B, classes)``."""
        return self.head(features.mean(dim=(2, 3)))  # (B, num_classes)


@register_model
def resnet18(**kwargs: Any) -> ResNet:
    """ResNet18, CIFAR variant (Table 1 baseline)."""
    return ResNet(make_config(ResNetConfig, "resnet18", {}, kwargs))
