"""Writers of small files in the exact official dataset formats, for the data tests.

Kept apart from the test modules so each test file stays about one reader. Nothing here
downloads: every file is made from seeded random pixels.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer",
                 "dog", "frog", "horse", "ship", "truck"]
CIFAR100_FINE = [f"fine_{i}" for i in range(100)]
CIFAR100_COARSE = [f"coarse_{i}" for i in range(20)]


def random_batch(n: int, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3072) uint8 planar-RGB rows and (n,) labels."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            rng.integers(0, num_classes, n).astype(np.int64))


def rows_to_hwc(rows: np.ndarray) -> np.ndarray:
    """What a reader must return for the rows: (n, 32, 32, 3), R then G then B planes."""
    return rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


# -- Python-2 style pickle, byte by byte, as cPickle protocol 2 wrote the official files --

def _py2_int(value: int) -> bytes:
    if 0 <= value < 256:
        return b"K" + bytes([value])
    if 0 <= value < 65536:
        return b"M" + struct.pack("<H", value)
    return b"J" + struct.pack("<i", value)


def _py2_str(value: bytes) -> bytes:
    if len(value) < 256:
        return b"U" + bytes([len(value)]) + value
    return b"T" + struct.pack("<i", len(value)) + value


def _py2_uint8_array(array: np.ndarray) -> bytes:
    shape = b"".join(_py2_int(d) for d in array.shape)
    shape += {1: b"\x85", 2: b"\x86", 3: b"\x87"}[array.ndim]
    dtype = (b"cnumpy\ndtype\n" + _py2_str(b"u1") + _py2_int(0) + _py2_int(1) + b"\x87R"
             + b"(" + _py2_int(3) + _py2_str(b"|") + b"NNN" + _py2_int(-1) + _py2_int(-1)
             + _py2_int(0) + b"tb")
    return (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + _py2_int(0)
            + b"\x85" + _py2_str(b"b") + b"\x87R"
            + b"(" + _py2_int(1) + shape + dtype + b"\x89" + _py2_str(array.tobytes())
            + b"tb")


def py2_pickle(entries: dict[bytes, object]) -> bytes:
    """Protocol-2 pickle of a dict of bytes keys to uint8 arrays, bytes, ints or lists of them,
    using the opcodes Python 2 emits for ``str`` (SHORT_BINSTRING/BINSTRING)."""
    out = b"\x80\x02}("
    for key, value in entries.items():
        out += _py2_str(key)
        if isinstance(value, np.ndarray):
            out += _py2_uint8_array(value)
        elif isinstance(value, bytes):
            out += _py2_str(value)
        elif isinstance(value, int):
            out += _py2_int(value)
        else:
            items = [_py2_str(v) if isinstance(v, bytes) else _py2_int(int(v)) for v in value]
            out += b"](" + b"".join(items) + b"e"
    return out + b"u."


# -- CIFAR writers --

def write_cifar10_python(
    root: Path, n: int = 6, seed: int = 0, py2: bool = False
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """root/cifar-10-batches-py with 5 train batches of n images and a test batch."""
    directory = root / "cifar-10-batches-py"
    directory.mkdir(parents=True)
    written = {}
    for i, name in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        rows, labels = random_batch(n, 10, seed + i)
        entries = {b"batch_label": b"batch", b"labels": labels.tolist(), b"data": rows,
                   b"filenames": [f"img_{k}.png".encode() for k in range(n)]}
        data = py2_pickle(entries) if py2 else pickle.dumps(entries, protocol=2)
        (directory / name).write_bytes(data)
        written[name] = (rows, labels)
    meta = {b"num_cases_per_batch": n, b"label_names": [s.encode() for s in CIFAR10_NAMES],
            b"num_vis": 3072}
    (directory / "batches.meta").write_bytes(
        py2_pickle(meta) if py2 else pickle.dumps(meta, protocol=2))
    return written


def write_cifar10_binary(root: Path, n: int = 6, seed: int = 0) -> dict[str, tuple]:
    """root/cifar-10-batches-bin: <1 label byte><3072 pixel bytes> records."""
    directory = root / "cifar-10-batches-bin"
    directory.mkdir(parents=True)
    written = {}
    for i, name in enumerate([*(f"data_batch_{k}.bin" for k in range(1, 6)), "test_batch.bin"]):
        rows, labels = random_batch(n, 10, seed + i)
        records = np.concatenate([labels[:, None].astype(np.uint8), rows], axis=1)
        (directory / name).write_bytes(records.tobytes())
        written[name] = (rows, labels)
    (directory / "batches.meta.txt").write_text("\n".join(CIFAR10_NAMES) + "\n\n")
    return written


def write_cifar100_python(root: Path, n: int = 7, seed: int = 0) -> dict[str, tuple]:
    """root/cifar-100-python with train, test and meta (fine and coarse labels)."""
    directory = root / "cifar-100-python"
    directory.mkdir(parents=True)
    written = {}
    for i, name in enumerate(["train", "test"]):
        rows, fine = random_batch(n, 100, seed + i)
        entries = {b"filenames": [b"a.png"] * n, b"batch_label": b"training batch 1 of 1",
                   b"fine_labels": fine.tolist(), b"coarse_labels": (fine // 5).tolist(),
                   b"data": rows}
        (directory / name).write_bytes(pickle.dumps(entries, protocol=2))
        written[name] = (rows, fine)
    meta = {b"fine_label_names": [s.encode() for s in CIFAR100_FINE],
            b"coarse_label_names": [s.encode() for s in CIFAR100_COARSE]}
    (directory / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return written


def write_cifar100_binary(root: Path, n: int = 7, seed: int = 0) -> dict[str, tuple]:
    """root/cifar-100-binary: <coarse byte><fine byte><3072 pixel bytes> records."""
    directory = root / "cifar-100-binary"
    directory.mkdir(parents=True)
    written = {}
    for i, name in enumerate(["train.bin", "test.bin"]):
        rows, fine = random_batch(n, 100, seed + i)
        labels = np.stack([fine // 5, fine], axis=1).astype(np.uint8)
        (directory / name).write_bytes(np.concatenate([labels, rows], axis=1).tobytes())
        written[name] = (rows, fine)
    (directory / "fine_label_names.txt").write_text("\n".join(CIFAR100_FINE) + "\n")
    (directory / "coarse_label_names.txt").write_text("\n".join(CIFAR100_COARSE) + "\n")
    return written


# -- IDX writers --

def idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte IDX file: 00 00 08 <ndim>, big-endian uint32 dims, data."""
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_set(
    directory: Path, n_train: int = 12, n_test: int = 5, gz: bool = True, seed: int = 0
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The four MNIST-style files (train-/t10k- images idx3, labels idx1) in directory."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = {}
    for prefix, split, n in (("train", "train", n_train), ("t10k", "test", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            path = directory / f"{prefix}-{kind}-ubyte"
            data = idx_bytes(array)
            if gz:
                with gzip.open(f"{path}.gz", "wb") as handle:
                    handle.write(data)
            else:
                path.write_bytes(data)
        written[split] = (images, labels.astype(np.int64))
    return written
