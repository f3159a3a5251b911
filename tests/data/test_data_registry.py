"""The dataset registry and the ImageArrays container."""

from __future__ import annotations

import numpy as np
import pytest

from attnconv.data import DATASETS, ImageArrays, list_datasets, load_dataset
from attnconv.errors import ConfigError


def test_registry_names() -> None:
    assert list_datasets() == ["cifar10", "cifar100", "fashion-mnist", "mnist",
                               "imagefolder", "embedded"]
    assert set(DATASETS) == set(list_datasets())


def test_unknown_name_lists_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown dataset 'cifar11'.*cifar10.*embedded"):
        load_dataset("cifar11")
    with pytest.raises(ValueError):  # ConfigError is a ValueError
        load_dataset("imagenet")


def test_unknown_split() -> None:
    with pytest.raises(ConfigError, match=r"unknown split 'val'.*train, test"):
        load_dataset("embedded", "val")


def test_image_arrays_validates_and_subsets() -> None:
    images = np.zeros((4, 2, 2, 1), np.uint8)
    arrays = ImageArrays(images, np.array([0, 1, 0, 1], dtype=np.int32), ["a", "b"], "x")
    assert len(arrays) == 4 and arrays.labels.dtype == np.int64 and arrays.num_classes == 2
    part = arrays.subset(np.array([1, 3]))
    assert len(part) == 2 and part.labels.tolist() == [1, 1] and part.name == "x"
    with pytest.raises(ValueError):
        ImageArrays(images.astype(np.float32), np.zeros(4), ["a"], "x")
    with pytest.raises(ValueError):
        ImageArrays(images, np.zeros(3), ["a"], "x")
