"""Your own images: a directory of class sub-directories of PNG/JPEG files.

Two layouts are accepted:

* split layout ``data_dir/<split>/<class>/*.png|jpg|jpeg`` (``train/`` and ``test/``): each
  split is read from its own directory; the class list is the sorted union of the class
  directories of both splits, so a label means the same class in each.
* flat layout ``data_dir/<class>/*.png|...`` (no ``train/`` or ``test/`` directory): all
  images are the "train" split; asking for "test" is an error rather than silently
  returning the training images. Hold a split out yourself with
  :func:`attnconv.data.train_val_split`.

Images are converted to RGB uint8 and must all have the same size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from attnconv.data.arrays import ImageArrays
from attnconv.errors import ConfigError, DatasetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SPLITS = ("train", "test")
_LAYOUT = "data_dir/<split>/<class>/*.png|jpg|jpeg or data_dir/<class>/*.png|jpg|jpeg"


def _class_dirs(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(directory: Path) -> list[Path]:
    return sorted(
        p for p in directory.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image  # Pillow comes with matplotlib; imported only when needed

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except Exception as error:  # any decoder failure on an untrusted file is a bad file
        raise DatasetError(
            f"cannot read image {path}: {error}. Replace or delete the file."
        ) from error


def _split_root(root: Path, split: str) -> tuple[Path, list[Path]]:
    """The directory holding ``split``'s class directories, and the roots defining classes."""
    split_dirs = [root / s for s in SPLITS if (root / s).is_dir()]
    if not split_dirs:
        if split != "train":
            raise DatasetError(
                f"{root} has no '{split}' directory: in the flat layout "
                "(data_dir/<class>/*.png) every image belongs to the train split. Create "
                f"{root / split}/<class>/ with held-out images, or split the train set "
                "yourself with attnconv.data.train_val_split."
            )
        return root, [root]
    if not (root / split).is_dir():
        raise DatasetError(
            f"{root} has {', '.join(d.name for d in split_dirs)}/ but no {split}/ directory; "
            f"expected {_LAYOUT}."
        )
    return root / split, split_dirs


def load_imagefolder(split: str, data_dir: str | Path | None) -> ImageArrays:
    """Load ``split`` of an image folder (see the module docstring for the layouts).

    Raises:
        ConfigError: no ``data_dir`` given.
        DatasetError: directory missing, no images, an unreadable image, or an image whose
            size differs from the first one (the message names it and suggests resizing).
    """
    if data_dir is None:
        raise ConfigError(f"the imagefolder dataset needs data_dir ({_LAYOUT})")
    root = Path(data_dir)
    if not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist; expected {_LAYOUT}.")
    directory, class_roots = _split_root(root, split)
    classes = sorted({c for r in class_roots for c in _class_dirs(r)})
    files = [(path, label) for label, name in enumerate(classes)
             if (directory / name).is_dir() for path in _image_files(directory / name)]
    if not files:
        raise DatasetError(
            f"no .png/.jpg/.jpeg images in class directories under {directory}; "
            f"expected {_LAYOUT}."
        )
    images = []
    for path, _ in files:
        image = _read_rgb(path)
        if images and image.shape != images[0].shape:
            height, width = images[0].shape[:2]
            raise DatasetError(
                f"{path} is {image.shape[1]}x{image.shape[0]} but {files[0][0]} is "
                f"{width}x{height}: all images must share one size. Resize them first "
                f"(e.g. PIL's Image.resize((W, H))) to a common size such as {width}x{height}."
            )
        images.append(image)
    return ImageArrays(
        images=np.stack(images), labels=np.array([label for _, label in files], dtype=np.int64),
        classes=classes, name="imagefolder",
    )
