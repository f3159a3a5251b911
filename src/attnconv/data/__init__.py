"""Datasets for attnconv: readers of the official files, a shipped subset, torch pipelines.

* :func:`load_dataset` / :func:`list_datasets`: ``cifar10``, ``cifar100`` (python or binary
  version), ``fashion-mnist``, ``mnist`` (IDX), ``imagefolder`` (your PNG/JPEG images) and
  ``embedded`` (a Fashion-MNIST subset shipped in the package) as :class:`ImageArrays`.
* :func:`train_val_split`: the validation set that chooses checkpoints.
* :class:`ImageBatches` (fast, batched) and :class:`ImageDataset` (for a ``DataLoader``):
  normalised channels-first float tensors, with :func:`augment_batch` (crop + flip).

Nothing here downloads: a missing dataset raises :class:`~attnconv.errors.DatasetError`
saying where it comes from.
"""

from __future__ import annotations

from attnconv.data.arrays import ImageArrays
from attnconv.data.datasets import (
    DATASETS,
    DatasetInfo,
    compute_stats,
    dataset_stats,
    list_datasets,
    load_dataset,
)
from attnconv.data.files import DATA_DIR_ENV, default_data_dir
from attnconv.data.idx import DEBIAN_FASHION_MNIST
from attnconv.data.loader import ImageBatches, ImageDataset
from attnconv.data.split import train_val_split
from attnconv.data.transforms import augment_batch, crop_flip, normalize

__all__ = [
    "DATASETS",
    "DATA_DIR_ENV",
    "DEBIAN_FASHION_MNIST",
    "DatasetInfo",
    "ImageArrays",
    "ImageBatches",
    "ImageDataset",
    "augment_batch",
    "compute_stats",
    "crop_flip",
    "dataset_stats",
    "default_data_dir",
    "list_datasets",
    "load_dataset",
    "normalize",
    "train_val_split",
]
