"""train_val_split: disjoint, complete, seeded, optionally stratified."""

from __future__ import annotations

import numpy as np
import pytest

from attnconv.data import train_val_split
from attnconv.errors import ConfigError


def test_disjoint_complete_and_sized() -> None:
    train, val = train_val_split(1000, 0.1, seed=0)
    assert len(val) == 100 and len(train) == 900
    assert not set(train) & set(val)
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(1000))


def test_seeded() -> None:
    a = train_val_split(500, 0.2, seed=7)
    b = train_val_split(500, 0.2, seed=7)
    c = train_val_split(500, 0.2, seed=8)
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_stratified_keeps_class_proportions() -> None:
    labels = np.array([0] * 600 + [1] * 300 + [2] * 100)
    train, val = train_val_split(1000, 0.1, seed=1, labels=labels)
    assert np.bincount(labels[val]).tolist() == [60, 30, 10]
    assert len(train) + len(val) == 1000 and not set(train) & set(val)
    odd = np.array([0] * 7 + [1] * 5 + [2] * 3)
    assert len(train_val_split(15, 0.3, labels=odd)[1]) == round(15 * 0.3)


def test_edge_cases() -> None:
    train, val = train_val_split(10, 0.0)
    assert len(val) == 0 and len(train) == 10
    assert [len(x) for x in train_val_split(0, 0.5, labels=np.array([]))] == [0, 0]
    for bad in (-0.1, 1.0):
        with pytest.raises(ConfigError):
            train_val_split(10, bad)
    with pytest.raises(ConfigError):
        train_val_split(10, 0.1, labels=np.zeros(9))
