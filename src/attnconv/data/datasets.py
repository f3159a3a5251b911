"""The dataset registry: names, loaders, normalisation statistics.

``load_dataset(name, split, data_dir)`` is the one entry point the rest of attnconv uses;
``list_datasets()`` lists the names. Each :class:`DatasetInfo` also carries the per-channel
mean and std (pixels scaled to [0, 1]) that the torch side normalises with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from attnconv.data.arrays import ImageArrays
from attnconv.data.cifar import load_cifar
from attnconv.data.embedded import load_embedded
from attnconv.data.folder import load_imagefolder
from attnconv.data.idx import load_idx_dataset
from attnconv.errors import ConfigError

SPLITS = ("train", "test")

Stats = tuple[tuple[float, ...], tuple[float, ...]]


@dataclass(frozen=True)
class DatasetInfo:
    """A registered dataset.

    Attributes:
        name: registry name.
        load: ``load(split, data_dir) -> ImageArrays``.
        description: one line for ``--help`` and listings.
        mean: per-channel mean of the training pixels in [0, 1], or None when it depends on
            the data (``imagefolder``: use :func:`compute_stats` on the training split).
        std: per-channel standard deviation, as ``mean``.
    """

    name: str
    load: Callable[[str, str | Path | None], ImageArrays]
    description: str
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None


def _embedded(split: str, data_dir: str | Path | None) -> ImageArrays:
    return load_embedded(split)  # shipped with the package: data_dir does not apply


DATASETS: dict[str, DatasetInfo] = {
    info.name: info for info in (
        # CIFAR-10: the paper's values (sec. 3). Its std is the commonly copied
        # per-image figure; the true pixel std is about (0.2470, 0.2435, 0.2616).
        DatasetInfo("cifar10", partial(load_cifar, "cifar10"),
                    "CIFAR-10, 32x32 RGB, 10 classes (python or binary version files)",
                    (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
        DatasetInfo("cifar100", partial(load_cifar, "cifar100"),
                    "CIFAR-100, 32x32 RGB, 100 fine classes (python or binary version files)",
                    (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
        DatasetInfo("fashion-mnist", partial(load_idx_dataset, "fashion-mnist"),
                    "Fashion-MNIST, 28x28 grey, 10 classes (IDX files)",
                    (0.2860,), (0.3530,)),
        DatasetInfo("mnist", partial(load_idx_dataset, "mnist"),
                    "MNIST digits, 28x28 grey, 10 classes (IDX files)",
                    (0.1307,), (0.3081,)),
        DatasetInfo("imagefolder", load_imagefolder,
                    "your images: data_dir/[train|test/]<class>/*.png|jpg, RGB",
                    None, None),
        DatasetInfo("embedded", _embedded,
                    "Fashion-MNIST subset shipped with attnconv: 10,000 train + 2,000 test, "
                    "28x28 grey, no download", (0.2840,), (0.3513,)),
    )
}


def list_datasets() -> list[str]:
    """Names :func:`load_dataset` accepts."""
    return list(DATASETS)


def _info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}"
        ) from None


def load_dataset(
    name: str, split: str = "train", data_dir: str | Path | None = None
) -> ImageArrays:
    """Load ``split`` ("train" or "test") of dataset ``name`` into memory.

    Args:
        name: one of :func:`list_datasets`.
        split: "train" or "test". Hold a validation set out of "train" with
            :func:`attnconv.data.train_val_split`; keep "test" for final numbers.
        data_dir: where the files are (per-dataset defaults: see each reader); ignored by
            "embedded".

    Raises:
        ConfigError: unknown name or split.
        DatasetError: files missing, incomplete or corrupted (the message says the fix).
    """
    info = _info(name)
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return info.load(split, data_dir)


def dataset_stats(name: str) -> Stats:
    """``(mean, std)`` per channel, pixels scaled to [0, 1], of a registered dataset.

    Raises:
        ConfigError: unknown name, or a dataset whose statistics depend on the data
            (``imagefolder``): use :func:`compute_stats` on its training split.
    """
    info = _info(name)
    if info.mean is None or info.std is None:
        raise ConfigError(
            f"dataset {name!r} has no fixed normalisation statistics; compute them on the "
            "training split with attnconv.data.compute_stats(arrays)"
        )
    return info.mean, info.std


def compute_stats(arrays: ImageArrays, chunk: int = 4096) -> Stats:
    """Per-channel mean and std of ``arrays``' pixels scaled to [0, 1] (chunked, float64)."""
    channels = arrays.images.shape[-1]
    total = np.zeros(channels)
    squares = np.zeros(channels)
    for start in range(0, len(arrays), chunk):
        block = arrays.images[start:start + chunk].astype(np.float64) / 255.0
        total += block.sum(axis=(0, 1, 2))
        squares += (block * block).sum(axis=(0, 1, 2))
    count = max(1, arrays.images[..., 0].size)
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean * mean, 0.0))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)
