"""The three splits of a training run as uint8 tensors, with the normalisation to apply."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from attnconv.data.datasets import compute_stats, dataset_stats, load_dataset
from attnconv.data.split import train_val_split
from attnconv.errors import ConfigError


class DataConfig(Protocol):
    """The settings :func:`load_data` reads (a ``TrainConfig`` has them all)."""

    dataset: str
    data_dir: str | None
    val_fraction: float
    seed: int
    train_subset: int | None


@dataclass
class Data:
    """The splits as uint8 ``(N, C, H, W)`` tensors with labels, and the normalisation."""

    train: tuple[Tensor, Tensor]
    val: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        c, h, w = self.train[0].shape[1:]
        return c, h, w

    def train_fingerprint(self) -> str:
        """SHA-256 of the training images and labels in split order (checked on resume)."""
        h = hashlib.sha256()
        for t in self.train:
            h.update(str(tuple(t.shape)).encode())
            h.update(t.contiguous().numpy().tobytes())
        return h.hexdigest()


def load_data(cfg: DataConfig) -> Data:
    """Load train/test, hold out the validation split, convert to tensors."""
    train = load_dataset(cfg.dataset, "train", cfg.data_dir)
    test = load_dataset(cfg.dataset, "test", cfg.data_dir)
    train_idx, val_idx = train_val_split(len(train), cfg.val_fraction, cfg.seed, train.labels)
    if cfg.train_subset is not None:
        train_idx = train_idx[:cfg.train_subset]
    try:
        mean, std = dataset_stats(cfg.dataset)
    except ConfigError:
        mean, std = compute_stats(train)

    def tensors(images: Any, labels: Any) -> tuple[Tensor, Tensor]:
        x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # (N, C, H, W) uint8
        return x, torch.from_numpy(labels).long()

    return Data(tensors(train.images[train_idx], train.labels[train_idx]),
                tensors(train.images[val_idx], train.labels[val_idx]),
                tensors(test.images, test.labels), list(train.classes),
                tuple(map(float, mean)), tuple(map(float, std)))
