"""MNIST and Fashion-MNIST from IDX files (gzipped or raw).

An IDX file is a 4-byte magic number ``00 00 <type> <ndim>``, then ``ndim`` big-endian uint32
dimensions, then the values in row order. Both datasets use type ``0x08`` (unsigned byte):
images are ``idx3`` (N, 28, 28), labels ``idx1`` (N,).

Directories searched, in order: ``data_dir``, ``data_dir/<name>``, and the torchvision layout
``data_dir/<MNIST|FashionMNIST>/raw``. Without ``data_dir``, Fashion-MNIST is also looked for
where Debian's ``dataset-fashion-mnist`` package installs it (:data:`DEBIAN_FASHION_MNIST`).
"""

from __future__ import annotations

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
)

#: Where ``apt-get install dataset-fashion-mnist`` puts the four gzipped IDX files.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

_UBYTE = 0x08


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


def read_idx(path: Path, ndim: int, fix: str = "") -> np.ndarray:
    """Read an unsigned-byte IDX file of ``ndim`` dimensions, validating header and length.

    Raises:
        DatasetError: wrong magic number, type or dimension count, a zero dimension, or a
            payload shorter or longer than the header's dimensions say.
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
    size = int(np.prod(dims, dtype=object))
    raw = read_bytes(path, len(header) + size + 1, fix)
    if len(raw) != len(header) + size:
        found = len(raw) - len(header)
        problem = f"truncated: found {found}" if found < size else "trailing bytes after"
        raise corrupt_file_error(
            path, f"{problem} of the {size} data bytes its header {dims} announces", fix
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=len(header)).reshape(dims)


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
        images = read_idx(images_path, 3, fix)
        labels = read_idx(labels_path, 1, fix).astype(np.int64)
        if labels.shape[0] != images.shape[0]:
            raise corrupt_file_error(
                labels_path, f"{labels.shape[0]} labels for {images.shape[0]} images in "
                f"{images_path.name}", fix,
            )
        if labels.max() >= len(spec.classes):
            raise corrupt_file_error(labels_path, "labels outside 0..9", fix)
        return ImageArrays(images=images[..., None].copy(), labels=labels,
                           classes=list(spec.classes), name=name)
    raise missing_files_error(name, searched, [f"{s}[.gz]" for s in stems], spec.source, fix)
