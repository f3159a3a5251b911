"""MNIST / Fashion-MNIST IDX readers: gz and raw files, validation, fuzzing."""

from __future__ import annotations

import gzip
from pathlib import Path

import data_writers as w
import numpy as np
import pytest

from attnconv.data import DEBIAN_FASHION_MNIST, load_dataset
from attnconv.data.idx import read_idx
from attnconv.errors import DatasetError


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
@pytest.mark.parametrize("name", ["fashion-mnist", "mnist"])
def test_reads_both_splits(tmp_path: Path, gz: bool, name: str) -> None:
    written = w.write_idx_set(tmp_path, gz=gz)
    for split, (images, labels) in written.items():
        arrays = load_dataset(name, split, tmp_path)
        assert arrays.images.shape == (len(labels), 28, 28, 1)
        assert arrays.images.dtype == np.uint8 and arrays.images.flags.writeable
        np.testing.assert_array_equal(arrays.images[..., 0], images)
        np.testing.assert_array_equal(arrays.labels, labels)
        assert arrays.num_classes == 10 and arrays.name == name
    assert load_dataset("fashion-mnist", "test", tmp_path).classes[0] == "T-shirt/top"


def test_torchvision_layout_and_dotted_names(tmp_path: Path) -> None:
    written = w.write_idx_set(tmp_path / "MNIST" / "raw", gz=False)
    raw = tmp_path / "MNIST" / "raw"
    (raw / "t10k-images-idx3-ubyte").rename(raw / "t10k-images.idx3-ubyte")
    arrays = load_dataset("mnist", "test", tmp_path)
    np.testing.assert_array_equal(arrays.labels, written["test"][1])


def test_missing_files_message(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as info:
        load_dataset("mnist", "train", tmp_path)
    message = str(info.value)
    assert "train-images-idx3-ubyte[.gz]" in message and "train-labels-idx1-ubyte" in message
    assert str(tmp_path) in message and "never downloads" in message


def test_one_of_two_files_missing(tmp_path: Path) -> None:
    w.write_idx_set(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError, match="only one of the two test files"):
        load_dataset("fashion-mnist", "test", tmp_path)


def test_count_mismatch_names_labels_file(tmp_path: Path) -> None:
    w.write_idx_set(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(w.idx_bytes(np.zeros(3, np.uint8)))
    with pytest.raises(DatasetError, match=r"t10k-labels-idx1-ubyte.*3 labels for 5 images"):
        load_dataset("mnist", "test", tmp_path)


@pytest.mark.parametrize("data, problem", [
    (b"\x01\x00\x08\x03", "magic"),
    (b"\x00\x00\x0d\x03" + bytes(12), "unsigned-byte"),  # float data
    (b"\x00\x00\x08\x01" + bytes(8), "expected 00000803"),  # labels where images belong
    (b"\x00\x00\x08\x03\x00\x00", "truncated inside the IDX header"),
    (w.idx_bytes(np.zeros((0, 28, 28), np.uint8)), "empty"),
    (w.idx_bytes(np.zeros((2, 28, 28), np.uint8))[:-1], "truncated"),
    (w.idx_bytes(np.zeros((2, 28, 28), np.uint8)) + b"\0", "trailing bytes"),
    (b"\x00\x00\x08\x03\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", "more than the"),
])
def test_header_validation(tmp_path: Path, data: bytes, problem: str) -> None:
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(data)
    with pytest.raises(DatasetError, match=problem) as info:
        read_idx(path, 3)
    assert str(path) in str(info.value)


def test_fuzzed_files_fail_cleanly(tmp_path: Path) -> None:
    w.write_idx_set(tmp_path, n_train=3, n_test=2)
    rng = np.random.default_rng(2)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        path = tmp_path / name
        good = path.read_bytes()
        plain = gzip.decompress(good)
        cases = [good[:k] for k in sorted({1, 5, 10, 20, len(good) // 2, len(good) - 1})]
        cases += [rng.integers(0, 256, int(rng.integers(1, 300)), dtype=np.uint8).tobytes()
                  for _ in range(20)]
        cases += [gzip.compress(plain[: int(rng.integers(0, len(plain)))]) for _ in range(10)]
        cases += [gzip.compress(rng.integers(0, 256, 64, dtype=np.uint8).tobytes())
                  for _ in range(10)]
        for case in cases:
            path.write_bytes(case)
            with pytest.raises(DatasetError, match=name):
                load_dataset("mnist", "test", tmp_path)
        path.write_bytes(good)


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_debian_fashion_mnist_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ATTNCONV_DATA_DIR", str(tmp_path))  # empty: falls back to Debian's
    test = load_dataset("fashion-mnist", "test")
    assert test.images.shape == (10000, 28, 28, 1)
    assert np.bincount(test.labels).tolist() == [1000] * 10
