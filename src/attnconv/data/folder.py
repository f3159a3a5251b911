"""Your own images: a directory of class sub-directories of PNG/JPEG files.

Two layouts are accepted:

* split layout ``data_dir/<split>/<class>/*.png|jpg|jpeg`` (``train/`` and ``test/``): each
  split is read from its own directory; the class list is the sorted union of the class
  directories of both splits, so a label means the same class in each.
* flat layout ``data_dir/<class>/*.png|...`` (no ``train/`` or ``test/`` directory): all
  images are the "train" split; asking for "test" is an error rather than silently
  returning the training images. Hold a split out yourself with
  :func:`attnconv.data.train_val_split`.

Only PNG and JPEG content is decoded (whatever the suffix). Images are converted to RGB uint8
and must all have the same size. Each file's size is read from its header before anything is
decoded: an image larger than ``$ATTNCONV_MAX_IMAGE_PIXELS`` pixels (default 4096 x 4096) or
of another size than the first one is refused without decoding it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from attnconv.data.arrays import ImageArrays
from attnconv.errors import ConfigError, DatasetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

# Decoders tried, whatever the suffix says: a file is never handed to Pillow's other plugins
# (EPS would run Ghostscript; TIFF, PSD, ICO... widen what untrusted bytes reach).
_FORMATS = ("PNG", "JPEG", "MPO")  # MPO: Pillow's name for JPEGs holding several pictures

#: Environment variable raising (or lowering) the per-image pixel limit.
MAX_IMAGE_PIXELS_ENV = "ATTNCONV_MAX_IMAGE_PIXELS"
#: Largest ``width * height`` an image may declare by default (4096 x 4096: loading one image
#: at the limit peaks at about 230 MiB); checked from the header before any pixel is decoded.
DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096
SPLITS = ("train", "test")
_LAYOUT = "data_dir/<split>/<class>/*.png|jpg|jpeg or data_dir/<class>/*.png|jpg|jpeg"


def _class_dirs(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(directory: Path) -> list[Path]:
    return sorted(
        p for p in directory.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def max_image_pixels() -> int:
    """The largest ``width * height`` an image may declare: ``$ATTNCONV_MAX_IMAGE_PIXELS``
    if set, else :data:`DEFAULT_MAX_IMAGE_PIXELS`.

    Raises:
        ConfigError: the variable is set but not a positive integer.
    """
    raw = os.environ.get(MAX_IMAGE_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_IMAGE_PIXELS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"${MAX_IMAGE_PIXELS_ENV}={raw!r} is not a positive integer "
                          "(a number of pixels, width * height)")
    return value


def _read_rgb(path: Path, limit: int, first: tuple[Path, int, int] | None) -> np.ndarray:
    """Decode ``path`` to (H, W, 3) uint8 after checking the size its header declares.

    The size is read from the header (``Image.open`` decodes nothing) and must be at most
    ``limit`` pixels and, when ``first`` (path, width, height) is given, the first image's;
    only then are the pixels decoded, so a tiny file declaring a huge image never allocates it.
    """
    from PIL import Image  # Pillow comes with matplotlib; imported only when needed

    try:
        with Image.open(path, formats=_FORMATS) as image:
            width, height = image.size
            if width * height > limit:
                raise DatasetError(
                    f"{path} declares a {width}x{height} image ({width * height} pixels), "
                    f"more than the limit of {limit} pixels; nothing was decoded. Resize the "
                    f"image, or raise the limit with {MAX_IMAGE_PIXELS_ENV}=<pixels> if the "
                    "file is genuine."
                )
            if first is not None and (width, height) != first[1:]:
                raise DatasetError(
                    f"{path} is {width}x{height} but {first[0]} is {first[1]}x{first[2]}: "
                    "all images must share one size. Resize them first (e.g. PIL's "
                    f"Image.resize((W, H))) to a common size such as {first[1]}x{first[2]}."
                )
            pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except DatasetError:
        raise
    except Exception as error:  # any decoder failure on an untrusted file is a bad file
        raise DatasetError(
            f"cannot read image {path}: {error}. Replace or delete the file."
        ) from error
    if pixels.shape != (height, width, 3):  # a decoder that disagrees with its own header
        raise DatasetError(f"cannot read image {path}: decoded {pixels.shape[1]}x"
                           f"{pixels.shape[0]} pixels from a {width}x{height} header. "
                           "Replace or delete the file.")
    return pixels


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
    limit = max_image_pixels()
    images: list[np.ndarray] = []
    for path, _ in files:
        first = (files[0][0], images[0].shape[1], images[0].shape[0]) if images else None
        images.append(_read_rgb(path, limit, first))
    return ImageArrays(
        images=np.stack(images), labels=np.array([label for _, label in files], dtype=np.int64),
        classes=classes, name="imagefolder",
    )
