"""MNIST and Fashion-MNIST from IDX files (gzipped or raw).

An IDX file is a 4-byte magic number ``00 00 <type> <ndim>``, then ``ndim`` big-endian uint32
dimensions, then the values in row order. Both datasets use type ``0x08`` (unsigned byte):
images are ``idx3`` (N, 28, 28), labels ``idx1`` (N,).

Both headers are checked before any data is read: shapes, equal N, and a declared payload of at
most :data:`MAX_IDX_BYTES` (1 GiB). Data is then read (or gunzipped) straight into an array of
the declared size and at most one byte further, so memory never exceeds what the header
declares, however far a hostile ``.gz`` stream would expand.

Directories searched, in order: ``data_dir``, ``data_dir/<name>``, and the torchvision layout
``data_dir/<MNIST|FashionMNIST>/raw``. Without ``data_dir``, Fashion-MNIST is also looked for
where Debian's ``dataset-fashion-mnist`` package installs it (:data:`DEBIAN_FASHION_MNIST`).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from attnconv.data.arrays import ImageArrays
from attnconv.data.files import (
    DATA_DIR_ENV,
    corrupt_file_error,
    default_data_dir,
    missing_files_error,
    read_bytes,
    read_exact,
)

#: Where ``apt-get install dataset-fashion-mnist`` puts the four gzipped IDX files.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

_UBYTE = 0x08
_IMAGE_HW = (28, 28)  # MNIST and Fashion-MNIST images

#: Largest payload one IDX file may declare (1 GiB: 1.37 million 28x28 images; the official
#: MNIST training images are 47 MB). A header declaring more is refused before any data is
#: read or decompressed, which bounds the memory a small hostile ``.gz`` file can claim.
MAX_IDX_BYTES = 1 << 30


@dataclass(frozen=True)
class IdxDataset:
    """What distinguishes MNIST from Fashion-MNIST on disk."""

    name: str
    classes: tuple[str, ...]
    source: str
    subdirs: tuple[str, ...]
    system_dirs: tuple[Path, ...]


FASHION_MNIST = IdxDataset(
    "fashion-mnist",
    ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
     "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    "https://github.com/zalandoresearch/fashion-mnist (Debian: apt-get install "
    "dataset-fashion-mnist)",
    ("fashion-mnist", "FashionMNIST/raw"),
    (DEBIAN_FASHION_MNIST,),
)
MNIST = IdxDataset(
    "mnist", tuple(str(d) for d in range(10)), "http://yann.lecun.com/exdb/mnist/",
    ("mnist", "MNIST/raw"), (),
)
IDX_DATASETS = {d.name: d for d in (FASHION_MNIST, MNIST)}


def _file_names(split: str) -> tuple[str, str]:
    prefix = "train" if split == "train" else "t10k"
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def _find(directory: Path, stem: str) -> Path | None:
    """``stem``, ``stem.gz`` or the ``train-images.idx3-ubyte`` spelling, if present."""
    dotted = stem.replace("-idx", ".idx")
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def read_idx_header(path: Path, ndim: int, fix: str = "") -> tuple[tuple[int, ...], int]:
    """The dimensions an unsigned-byte IDX file of ``ndim`` dimensions declares, and the
    header's length; only the header is read (decompressed).

    Raises:
        DatasetError: wrong magic number, type or dimension count, a zero dimension, or
            dimensions whose product exceeds :data:`MAX_IDX_BYTES`.
    """
    header = read_bytes(path, 4 + 4 * ndim, fix)
    if len(header) < 4 or header[:2] != b"\0\0":
        raise corrupt_file_error(path, "no IDX magic number (00 00 ...)", fix)
    if header[2] != _UBYTE or header[3] != ndim:
        raise corrupt_file_error(
            path, f"IDX magic {header[:4].hex()} is not unsigned-byte with {ndim} "
            f"dimension(s) (expected 0000080{ndim})", fix,
        )
    if len(header) < 4 + 4 * ndim:
        raise corrupt_file_error(path, "truncated inside the IDX header", fix)
    dims = struct.unpack(f">{ndim}I", header[4:])
    if 0 in dims:
        raise corrupt_file_error(path, f"empty dimensions {dims}", fix)
    size = math.prod(dims)
    if size > MAX_IDX_BYTES:
        raise corrupt_file_error(
            path, f"its header declares dimensions {dims}, {size} bytes, more than the "
            f"{MAX_IDX_BYTES} bytes (1 GiB) attnconv reads from one IDX file (the official "
            "MNIST training images are 47 MB)", fix,
        )
    return dims, len(header)


def read_idx(path: Path, ndim: int, fix: str = "") -> np.ndarray:
    """Read an unsigned-byte IDX file of ``ndim`` dimensions, validating header and length.

    The header is checked first (:func:`read_idx_header`); then at most the declared number
    of bytes (plus one, to detect trailing data) is read or decompressed, straight into the
    returned array, so a small gzip file that expands without end costs no more memory than
    its header declares.

    Raises:
        DatasetError: a bad header (see :func:`read_idx_header`), or a payload shorter or
            longer than the header's dimensions say.
    """
    dims, offset = read_idx_header(path, ndim, fix)
    return read_exact(path, offset, math.prod(dims), fix, f"its header {dims}").reshape(dims)


def _search_dirs(spec: IdxDataset, data_dir: Path | None) -> list[Path]:
    roots = [default_data_dir()] if data_dir is None else [Path(data_dir)]
    dirs = [d for root in roots for d in (root, *(root / s for s in spec.subdirs))]
    return dirs + (list(spec.system_dirs) if data_dir is None else [])


def load_idx_dataset(name: str, split: str, data_dir: str | Path | None) -> ImageArrays:
    """Load one split of "mnist" or "fashion-mnist" as (N, 28, 28, 1) uint8 images.

    Args:
        name: "mnist" or "fashion-mnist".
        split: "train" (60,000 images officially) or "test" (10,000, the ``t10k`` files).
        data_dir: directory holding the IDX files (see the module docstring for defaults).

    Raises:
        DatasetError: files missing or corrupted, or images and labels disagree.
    """
    spec = IDX_DATASETS[name]
    stems = _file_names(split)
    fix = (f"Put the four IDX files in one directory and pass it as data_dir (or set "
           f"${DATA_DIR_ENV}).")
    searched = _search_dirs(spec, None if data_dir is None else Path(data_dir))
    for directory in searched:
        images_path, labels_path = (_find(directory, stem) for stem in stems)
        if images_path is None and labels_path is None:
            continue
        if images_path is None or labels_path is None:
            raise missing_files_error(
                name, [directory], [f"{s}[.gz]" for s in stems], spec.source,
                f"The directory has only one of the two {split} files. {fix}",
            )
        # both headers first: a disagreement is refused before any payload is read
        (count, *size), _ = read_idx_header(images_path, 3, fix)
        if tuple(size) != _IMAGE_HW:
            raise corrupt_file_error(
                images_path, f"images of {size[0]}x{size[1]} pixels; {name} images are "
                f"{_IMAGE_HW[0]}x{_IMAGE_HW[1]}", fix)
        (labels_count,), _ = read_idx_header(labels_path, 1, fix)
        if labels_count != count:
            raise corrupt_file_error(
                labels_path, f"{labels_count} labels for {count} images in "
                f"{images_path.name}", fix,
            )
        images = read_idx(images_path, 3, fix)
        labels = read_idx(labels_path, 1, fix)
        if labels.max() >= len(spec.classes):
            raise corrupt_file_error(labels_path, "labels outside 0..9", fix)
        return ImageArrays(images=images[..., None], labels=labels.astype(np.int64),
                           classes=list(spec.classes), name=name)
    raise missing_files_error(name, searched, [f"{s}[.gz]" for s in stems], spec.source, fix)
