"""The in-memory form every dataset reader returns: uint8 images and int64 labels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ImageArrays:
    """A whole split of an image-classification dataset, held in memory.

    Attributes:
        images: ``(N, H, W, C)`` uint8, channels last as the files store them
            (grey images have ``C == 1``).
        labels: ``(N,)`` int64 class indices into ``classes``.
        classes: class names, index ``i`` names label ``i``.
        name: the registry name of the dataset (``"cifar10"``, ``"embedded"``...); the
            torch side looks its normalisation statistics up by this name.
    """

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    name: str

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise ValueError(
                f"images must be a (N, H, W, C) uint8 array, got {self.images.dtype} "
                f"with shape {self.images.shape}"
            )
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"labels must have shape ({self.images.shape[0]},), got {self.labels.shape}"
            )
        self.labels = self.labels.astype(np.int64, copy=False)

    def __len__(self) -> int:
        """Number of images."""
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        """Number of classes (``len(classes)``)."""
        return len(self.classes)

    def subset(self, indices: np.ndarray) -> ImageArrays:
        """The images at ``indices`` (e.g. one side of :func:`train_val_split`), as a copy."""
        return ImageArrays(
            images=self.images[indices], labels=self.labels[indices],
            classes=list(self.classes), name=self.name,
        )
