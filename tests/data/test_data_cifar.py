"""CIFAR-10/100 readers on small files in the official python and binary formats."""

from __future__ import annotations

import pickle
from pathlib import Path

import data_writers as w
import numpy as np
import pytest

from attnconv.data import load_dataset
from attnconv.errors import DatasetError, UnsafePickleError


def _check(arrays, written, names, num_classes):
    rows = np.concatenate([written[n][0] for n in names])
    labels = np.concatenate([written[n][1] for n in names])
    assert arrays.images.shape == (len(rows), 32, 32, 3)
    assert arrays.images.dtype == np.uint8 and arrays.labels.dtype == np.int64
    np.testing.assert_array_equal(arrays.images, w.rows_to_hwc(rows))
    np.testing.assert_array_equal(arrays.labels, labels)
    assert arrays.num_classes == num_classes


TRAIN10 = [f"data_batch_{k}" for k in range(1, 6)]


@pytest.mark.parametrize("py2", [False, True], ids=["py3-protocol2", "py2-opcodes"])
def test_cifar10_python_both_splits(tmp_path: Path, py2: bool) -> None:
    written = w.write_cifar10_python(tmp_path, py2=py2)
    train = load_dataset("cifar10", "train", tmp_path)
    _check(train, written, TRAIN10, 10)
    assert train.classes == w.CIFAR10_NAMES and train.name == "cifar10"
    _check(load_dataset("cifar10", "test", tmp_path), written, ["test_batch"], 10)


def test_cifar10_pixel_layout_is_planar_rgb(tmp_path: Path) -> None:
    written = w.write_cifar10_python(tmp_path, n=2)
    rows = written["test_batch"][0]
    image = load_dataset("cifar10", "test", tmp_path).images[1]
    # pixel (row 3, column 5): red at 3*32+5, green 1024 later, blue 2048 later
    assert tuple(image[3, 5]) == (rows[1, 101], rows[1, 1125], rows[1, 2149])


def test_cifar10_binary_and_extracted_dir(tmp_path: Path) -> None:
    written = w.write_cifar10_binary(tmp_path)
    _check(load_dataset("cifar10", "train", tmp_path),
           written, [f"{n}.bin" for n in TRAIN10], 10)
    test = load_dataset("cifar10", "test", tmp_path / "cifar-10-batches-bin")
    _check(test, written, ["test_batch.bin"], 10)
    assert test.classes == w.CIFAR10_NAMES


def test_cifar100_python_fine_labels(tmp_path: Path) -> None:
    written = w.write_cifar100_python(tmp_path)
    train = load_dataset("cifar100", "train", tmp_path)
    _check(train, written, ["train"], 100)
    assert train.classes == w.CIFAR100_FINE
    _check(load_dataset("cifar100", "test", tmp_path / "cifar-100-python"),
           written, ["test"], 100)


def test_cifar100_binary_uses_fine_byte(tmp_path: Path) -> None:
    written = w.write_cifar100_binary(tmp_path)
    _check(load_dataset("cifar100", "train", tmp_path), written, ["train.bin"], 100)
    test = load_dataset("cifar100", "test", tmp_path)
    _check(test, written, ["test.bin"], 100)
    assert test.classes == w.CIFAR100_FINE


def test_missing_directory_lists_expected_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as info:
        load_dataset("cifar10", "train", tmp_path / "nowhere")
    message = str(info.value)
    for expected in ("cifar-10-batches-py", "data_batch_1", "test_batch", "batches.meta",
                     "cifar-10-batches-bin", "cs.toronto.edu", "cifar-10-python.tar.gz"):
        assert expected in message


def test_incomplete_directory_names_missing_files(tmp_path: Path) -> None:
    w.write_cifar10_python(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(DatasetError, match="missing data_batch_4") as info:
        load_dataset("cifar10", "train", tmp_path)
    assert "data_batch_5" in str(info.value)  # the full expected list is given too
    assert len(load_dataset("cifar10", "test", tmp_path)) == 6  # test split still complete


def test_cifar100_missing_meta(tmp_path: Path) -> None:
    w.write_cifar100_binary(tmp_path)
    (tmp_path / "cifar-100-binary" / "fine_label_names.txt").unlink()
    with pytest.raises(DatasetError, match=r"fine_label_names\.txt"):
        load_dataset("cifar100", "test", tmp_path)


def test_truncated_binary_batch_names_file(tmp_path: Path) -> None:
    w.write_cifar10_binary(tmp_path)
    path = tmp_path / "cifar-10-batches-bin" / "test_batch.bin"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DatasetError, match=r"test_batch\.bin"):
        load_dataset("cifar10", "test", tmp_path)


def test_wrong_contents_in_pickle(tmp_path: Path) -> None:
    w.write_cifar10_python(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    cases = [
        [1, 2, 3],
        {b"data": np.zeros((2, 3072), np.uint8)},  # no labels
        {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]},
        {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]},
        {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]},
        {b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]},
        {b"data": b"not an array", b"labels": [0, 1]},
    ]
    for case in cases:
        path.write_bytes(pickle.dumps(case, protocol=2))
        with pytest.raises(DatasetError, match="test_batch"):
            load_dataset("cifar10", "test", tmp_path)


def test_wrong_number_of_class_names(tmp_path: Path) -> None:
    w.write_cifar10_binary(tmp_path)
    (tmp_path / "cifar-10-batches-bin" / "batches.meta.txt").write_text("cat\ndog\n")
    with pytest.raises(DatasetError, match=r"batches\.meta\.txt.*2 class names"):
        load_dataset("cifar10", "test", tmp_path)


def test_malicious_batch_is_refused(tmp_path: Path) -> None:
    w.write_cifar10_python(tmp_path)
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            import os
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(pickle.dumps({b"data": Exploit(), b"labels": []}, protocol=2))
    with pytest.raises(UnsafePickleError, match="data_batch_3") as info:
        load_dataset("cifar10", "train", tmp_path)
    assert "system" in str(info.value)
    assert not marker.exists()


def _fuzz_cases(good: bytes, rng: np.random.Generator) -> list[bytes]:
    cases = [b"", good[:1], good[:2], good[: len(good) // 2], good[:-1]]
    cases += [good[: int(rng.integers(1, len(good)))] for _ in range(15)]
    cases += [rng.integers(0, 256, int(rng.integers(1, 400)), dtype=np.uint8).tobytes()
              for _ in range(25)]
    for _ in range(25):  # flip a few bytes of a valid file
        mutated = bytearray(good)
        for pos in rng.integers(0, len(good), 3):
            mutated[pos] = int(rng.integers(0, 256))
        cases.append(bytes(mutated))
    return cases


@pytest.mark.parametrize("kind", ["python", "py2", "binary"])
def test_fuzzed_files_fail_cleanly(tmp_path: Path, kind: str) -> None:
    if kind == "binary":
        w.write_cifar10_binary(tmp_path, n=2)
        path = tmp_path / "cifar-10-batches-bin" / "test_batch.bin"
    else:
        w.write_cifar10_python(tmp_path, n=2, py2=kind == "py2")
        path = tmp_path / "cifar-10-batches-py" / "test_batch"
    good = path.read_bytes()
    rng = np.random.default_rng(1)
    for case in _fuzz_cases(good, rng):
        path.write_bytes(case)
        try:
            arrays = load_dataset("cifar10", "test", tmp_path)
        except DatasetError as error:
            assert str(path) in str(error)
        else:  # a mutation inside pixel bytes leaves a valid file
            assert arrays.images.shape[1:] == (32, 32, 3)
