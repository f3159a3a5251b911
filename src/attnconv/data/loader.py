"""From :class:`ImageArrays` to normalised float tensors, per item or per batch.

* :class:`ImageBatches` is the fast path: the whole split sits in one uint8 tensor and each
  batch is indexed, augmented and normalised with a few tensor ops (optionally on a GPU).
  Shuffling and augmentation are drawn from one ``torch.Generator``, so a seed fixes the data
  order and the augmentation of every epoch.
* :class:`ImageDataset` is a ``torch.utils.data.Dataset`` for code that wants a
  ``DataLoader``; its augmentation is reproducible with ``num_workers=0``.

Both give channels-first float32 images ``(C, H, W)``, normalised with the dataset's mean
and std (:func:`attnconv.data.dataset_stats`) unless given others.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from attnconv.data.arrays import ImageArrays
from attnconv.data.datasets import dataset_stats
from attnconv.data.transforms import augment_batch, normalize


def _to_uint8_nchw(arrays: ImageArrays) -> Tensor:
    """``(N, H, W, C)`` uint8 numpy -> contiguous ``(N, C, H, W)`` uint8 tensor (a copy)."""
    return torch.from_numpy(np.ascontiguousarray(arrays.images.transpose(0, 3, 1, 2)))


def _stats(
    arrays: ImageArrays, mean: Sequence[float] | None, std: Sequence[float] | None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if mean is None or std is None:
        default_mean, default_std = dataset_stats(arrays.name)
        mean = default_mean if mean is None else mean
        std = default_std if std is None else std
    return tuple(mean), tuple(std)


class ImageDataset(torch.utils.data.Dataset):
    """Map-style dataset of ``(image (C, H, W) float32 normalised, label int)``.

    Args:
        arrays: the split to serve.
        mean, std: per-channel statistics of pixels in [0, 1]; default the registered ones
            of ``arrays.name`` (``imagefolder`` has none: pass them, e.g. from
            :func:`attnconv.data.compute_stats` of the training split).
        augment: apply random crop (zero padding ``pad``) and horizontal flip.
        generator: source of the augmentation's randomness (None: torch's global one).
        pad, flip: see :func:`attnconv.data.augment_batch`.
    """

    def __init__(
        self, arrays: ImageArrays, mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None, augment: bool = False,
        generator: torch.Generator | None = None, pad: int = 4, flip: bool = True,
    ) -> None:
        self.images = _to_uint8_nchw(arrays)  # (N, C, H, W) uint8
        self.labels = arrays.labels.tolist()
        self.classes = list(arrays.classes)
        self.mean, self.std = _stats(arrays, mean, std)
        self.augment, self.generator, self.pad, self.flip = augment, generator, pad, flip

    def __len__(self) -> int:
        """Number of images."""
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        """The normalised ``(C, H, W)`` image and its label."""
        image = self.images[index : index + 1]  # (1, C, H, W) uint8
        if self.augment:
            image = augment_batch(image, self.generator, self.pad, self.flip)
        return normalize(image, self.mean, self.std)[0], self.labels[index]


class ImageBatches:
    """Iterate over a split in batches ``(images (B, C, H, W) float32, labels (B,) int64)``.

    Args:
        arrays: the split to serve.
        batch_size: images per batch (the last one may be smaller unless ``drop_last``).
        mean, std: as in :class:`ImageDataset`.
        shuffle: a new permutation each pass, drawn from ``generator``.
        augment: random crop and flip (before normalising, so the padding is black).
        generator: CPU ``torch.Generator`` for order and augmentation (None: torch's global).
        drop_last: drop the last incomplete batch.
        device: where batches are built and returned; uint8 pixels are moved first, so the
            augmentation and normalisation run there.
        pad, flip: see :func:`attnconv.data.augment_batch`.
    """

    def __init__(
        self, arrays: ImageArrays, batch_size: int, *, mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None, shuffle: bool = False, augment: bool = False,
        generator: torch.Generator | None = None, drop_last: bool = False,
        device: torch.device | str | None = None, pad: int = 4, flip: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.images = _to_uint8_nchw(arrays)  # (N, C, H, W) uint8
        self.labels = torch.from_numpy(arrays.labels)  # (N,) int64
        self.mean, self.std = _stats(arrays, mean, std)
        self.batch_size, self.shuffle, self.augment = batch_size, shuffle, augment
        self.generator, self.drop_last = generator, drop_last
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self.pad, self.flip = pad, flip

    def __len__(self) -> int:
        """Number of batches in one pass."""
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        """One pass over the split."""
        n = len(self.labels)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for b in range(len(self)):
            index = order[b * self.batch_size : (b + 1) * self.batch_size]
            images = self.images[index].to(self.device, non_blocking=True)  # (B, C, H, W) u8
            if self.augment:
                images = augment_batch(images, self.generator, self.pad, self.flip)
            labels = self.labels[index].to(self.device, non_blocking=True)
            yield normalize(images, self.mean, self.std), labels
