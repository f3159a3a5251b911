"""The image-folder reader on PNG/JPEG files written with PIL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from attnconv.data import load_dataset
from attnconv.errors import ConfigError, DatasetError


def _write(path: Path, pixels: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels)
    (image.convert(mode) if mode else image).save(path)


def _pixels(seed: int, size: tuple[int, int] = (8, 6)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def test_split_layout_classes_sorted_and_shared(tmp_path: Path) -> None:
    _write(tmp_path / "train" / "zebra" / "a.png", _pixels(0))
    _write(tmp_path / "train" / "zebra" / "b.PNG", _pixels(1))
    _write(tmp_path / "train" / "ant" / "c.png", _pixels(2))
    _write(tmp_path / "train" / "ant" / "grey.png", _pixels(3)[..., 0], mode="L")
    _write(tmp_path / "test" / "zebra" / "d.png", _pixels(4))  # no "ant" in test
    (tmp_path / "train" / "ant" / "notes.txt").write_text("ignored")

    train = load_dataset("imagefolder", "train", tmp_path)
    assert train.classes == ["ant", "zebra"] and train.name == "imagefolder"
    assert train.images.shape == (4, 8, 6, 3) and train.images.dtype == np.uint8
    assert train.labels.tolist() == [0, 0, 1, 1]
    np.testing.assert_array_equal(train.images[0], _pixels(2))
    grey = train.images[1]
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 0] == _pixels(3)[..., 0]).all()

    test = load_dataset("imagefolder", "test", tmp_path)
    assert test.classes == ["ant", "zebra"] and test.labels.tolist() == [1]


def test_flat_layout_is_train_only(tmp_path: Path) -> None:
    _write(tmp_path / "cat" / "1.png", _pixels(0))
    _write(tmp_path / "dog" / "2.png", _pixels(1), mode="RGBA")
    train = load_dataset("imagefolder", "train", tmp_path)
    assert train.classes == ["cat", "dog"] and len(train) == 2
    with pytest.raises(DatasetError, match="train_val_split"):
        load_dataset("imagefolder", "test", tmp_path)


def test_jpeg_is_read(tmp_path: Path) -> None:
    _write(tmp_path / "a" / "x.jpg", _pixels(0))
    _write(tmp_path / "a" / "y.jpeg", _pixels(1))
    arrays = load_dataset("imagefolder", "train", tmp_path)
    assert arrays.images.shape == (2, 8, 6, 3)


def test_size_mismatch_names_file_and_suggests_resize(tmp_path: Path) -> None:
    _write(tmp_path / "a" / "1.png", _pixels(0))
    _write(tmp_path / "b" / "odd.png", _pixels(1, size=(9, 6)))
    with pytest.raises(DatasetError, match=r"odd\.png is 6x9 .*[Rr]esize"):
        load_dataset("imagefolder", "train", tmp_path)


def test_bad_image_and_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    with pytest.raises(DatasetError, match=r"no \.png"):
        load_dataset("imagefolder", "train", tmp_path)
    _write(tmp_path / "a" / "good.png", _pixels(0))
    good = (tmp_path / "a" / "good.png").read_bytes()
    for data in [b"", b"garbage", good[: len(good) // 2]]:
        (tmp_path / "a" / "zz_bad.png").write_bytes(data)
        with pytest.raises(DatasetError, match=r"zz_bad\.png"):
            load_dataset("imagefolder", "train", tmp_path)


def test_needs_existing_data_dir(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_dataset("imagefolder", "train")
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("imagefolder", "train", tmp_path / "missing")
    (tmp_path / "train").mkdir()
    with pytest.raises(DatasetError, match="no test/ directory"):
        load_dataset("imagefolder", "test", tmp_path)
