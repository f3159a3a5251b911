"""Rebuild the embedded Fashion-MNIST subset from the official IDX files.

Usage::

    python -m attnconv.data.embedded.regenerate --idx-dir /usr/share/datasets/fashion-mnist

Selection: ``numpy.random.default_rng(seed)`` draws, class by class (0..9), ``--train-per-class``
indices without replacement from the official training file, then ``--test-per-class`` from
the official test file; each split keeps the official order (indices sorted). The archive is
an ``.npz`` (a zip of ``.npy`` members, readable by ``numpy.load``) whose members are
LZMA-compressed, with fixed timestamps so the same inputs give the same bytes.
"""

from __future__ import annotations

import argparse
import io
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from attnconv.data.idx import DEBIAN_FASHION_MNIST, FASHION_MNIST, load_idx_dataset

ARCHIVE_NAME = "fashion_mnist_subset.npz"
DEFAULT_SEED = 0
TRAIN_PER_CLASS = 1000
TEST_PER_CLASS = 200


def select_balanced(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``per_class`` examples of each class 0..max(labels), drawn by ``rng``."""
    picks = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False)
             for c in range(int(labels.max()) + 1)]
    return np.sort(np.concatenate(picks)).astype(np.int32)


def build_subset(
    idx_dir: Path, seed: int = DEFAULT_SEED,
    train_per_class: int = TRAIN_PER_CLASS, test_per_class: int = TEST_PER_CLASS,
) -> dict[str, np.ndarray]:
    """The arrays the archive holds, selected from the IDX files in ``idx_dir``."""
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {"classes": np.array(FASHION_MNIST.classes)}
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        full = load_idx_dataset("fashion-mnist", split, idx_dir)
        index = select_balanced(full.labels, per_class, rng)
        arrays[f"{split}_images"] = full.images[index]  # (n, 28, 28, 1) uint8
        arrays[f"{split}_labels"] = full.labels[index].astype(np.uint8)
        arrays[f"{split}_index"] = index  # position in the official file
    return arrays


def write_archive(arrays: dict[str, np.ndarray], path: Path) -> None:
    """Write ``arrays`` as an LZMA-compressed, byte-reproducible ``.npz``."""
    with zipfile.ZipFile(path, "w") as archive:
        for key, value in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(value), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_LZMA
            archive.writestr(info, buffer.getvalue())


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idx-dir", type=Path, default=DEBIAN_FASHION_MNIST,
                        help="directory with the four official Fashion-MNIST IDX files")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name(ARCHIVE_NAME))
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--train-per-class", type=int, default=TRAIN_PER_CLASS)
    parser.add_argument("--test-per-class", type=int, default=TEST_PER_CLASS)
    args = parser.parse_args(argv)
    arrays = build_subset(args.idx_dir, args.seed, args.train_per_class, args.test_per_class)
    write_archive(arrays, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes): "
          f"{len(arrays['train_labels'])} train, {len(arrays['test_labels'])} test images")


if __name__ == "__main__":
    main()
