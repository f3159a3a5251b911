"""A real dataset shipped inside the package: a class-balanced subset of Fashion-MNIST.

10,000 training images (1,000 per class) and 2,000 test images (200 per class), drawn with a
fixed seed from the official Fashion-MNIST train and test files (MIT licence, Zalando SE; see
``LICENSE.txt`` and ``README.txt`` beside this file, and :mod:`.regenerate` for how it was
made). It lets tests, demos and CI train on real images with no download. Loading needs
only numpy and the standard library.
"""

from __future__ import annotations

import lzma
import zipfile
from pathlib import Path

import numpy as np

from attnconv.data.arrays import ImageArrays
from attnconv.errors import DatasetError

ARCHIVE = Path(__file__).with_name("fashion_mnist_subset.npz")
_FIX = (
    "The attnconv installation is damaged: reinstall it, or rebuild the file with "
    "`python -m attnconv.data.embedded.regenerate --idx-dir DIR` from the official "
    "Fashion-MNIST IDX files (Debian: apt-get install dataset-fashion-mnist)."
)


def load_embedded(split: str = "train", archive: Path = ARCHIVE) -> ImageArrays:
    """Load ``split`` ("train": 10,000 images, "test": 2,000) as (N, 28, 28, 1) uint8.

    Raises:
        DatasetError: the archive is missing or damaged.
    """
    if not archive.is_file():
        raise DatasetError(f"the embedded dataset file {archive} is missing. {_FIX}")
    try:
        with np.load(archive, allow_pickle=False) as members:
            images = members[f"{split}_images"]
            labels = members[f"{split}_labels"].astype(np.int64)
            classes = [str(name) for name in members["classes"]]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, lzma.LZMAError) as error:
        raise DatasetError(f"the embedded dataset file {archive} is damaged ({error}). {_FIX}") \
            from error
    if images.dtype != np.uint8 or images.ndim != 4 or labels.shape != images.shape[:1]:
        raise DatasetError(f"the embedded dataset file {archive} has unexpected arrays. {_FIX}")
    return ImageArrays(images=images, labels=labels, classes=classes, name="embedded")
