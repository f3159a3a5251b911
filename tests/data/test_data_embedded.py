"""The Fashion-MNIST subset shipped in the package, and the script that rebuilds it."""

from __future__ import annotations

import zipfile
from pathlib import Path

import data_writers as w
import numpy as np
import pytest

from attnconv.data import DEBIAN_FASHION_MNIST, load_dataset
from attnconv.data.embedded import ARCHIVE, load_embedded
from attnconv.data.embedded.regenerate import build_subset, main, select_balanced
from attnconv.errors import DatasetError

EMBEDDED_DIR = ARCHIVE.parent


def test_shapes_and_class_balance() -> None:
    for split, per_class in (("train", 1000), ("test", 200)):
        arrays = load_dataset("embedded", split)
        assert arrays.images.shape == (10 * per_class, 28, 28, 1)
        assert arrays.images.dtype == np.uint8 and arrays.labels.dtype == np.int64
        assert np.bincount(arrays.labels, minlength=10).tolist() == [per_class] * 10
        assert arrays.classes[0] == "T-shirt/top" and arrays.classes[9] == "Ankle boot"
        assert arrays.name == "embedded"
        assert 0.25 < arrays.images.mean() / 255 < 0.32  # real clothes, not noise


def test_shipped_files_fit_budget_and_carry_licence() -> None:
    assert ARCHIVE.stat().st_size <= 5_000_000
    licence = (EMBEDDED_DIR / "LICENSE.txt").read_text()
    assert "Copyright (c) 2017 Zalando SE" in licence and "MIT License" in licence
    readme = (EMBEDDED_DIR / "README.txt").read_text()
    assert "regenerate" in readme and "1,000 of each" in readme
    with zipfile.ZipFile(ARCHIVE) as archive:
        assert {i.compress_type for i in archive.infolist()} == {zipfile.ZIP_LZMA}


def test_select_balanced_is_seeded_and_balanced() -> None:
    labels = np.repeat(np.arange(4), 25)
    np.random.default_rng(0).shuffle(labels)
    first = select_balanced(labels, 5, np.random.default_rng(3))
    again = select_balanced(labels, 5, np.random.default_rng(3))
    np.testing.assert_array_equal(first, again)
    assert np.all(np.diff(first) > 0)
    assert np.bincount(labels[first]).tolist() == [5] * 4


def test_regenerate_writes_loadable_reproducible_archive(tmp_path: Path) -> None:
    idx = tmp_path / "idx"
    written = w.write_idx_set(idx, n_train=60, n_test=40)
    out = tmp_path / "subset.npz"
    labels = written["train"][1]
    per_class = int(np.bincount(labels, minlength=10).min())
    main(["--idx-dir", str(idx), "--out", str(out), "--train-per-class", str(per_class),
          "--test-per-class", "0"])
    first = out.read_bytes()
    main(["--idx-dir", str(idx), "--out", str(out), "--train-per-class", str(per_class),
          "--test-per-class", "0"])
    assert out.read_bytes() == first
    train = load_embedded("train", archive=out)
    with np.load(out) as members:
        index = members["train_index"]
    np.testing.assert_array_equal(train.images[..., 0], written["train"][0][index])
    np.testing.assert_array_equal(train.labels, labels[index])


def test_missing_or_damaged_archive(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"missing.*regenerate"):
        load_embedded("train", archive=tmp_path / "absent.npz")
    damaged = tmp_path / "damaged.npz"
    damaged.write_bytes(ARCHIVE.read_bytes()[:200_000])
    with pytest.raises(DatasetError, match="damaged"):
        load_embedded("test", archive=damaged)


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_shipped_subset_matches_official_files() -> None:
    arrays = build_subset(DEBIAN_FASHION_MNIST)
    with np.load(ARCHIVE) as members:
        for key, value in arrays.items():
            np.testing.assert_array_equal(members[key], value, err_msg=key)
