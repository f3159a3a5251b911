"""Valid and hostile dataset files for the data-reader fuzz and memory tests.

The valid writers make the smallest directories each reader accepts (seeded pixels); the
hostile builders make files of at most 64 KB that try to make a reader allocate far more
memory than the file's size justifies, each through a different door of its format.
"""

from __future__ import annotations

import gzip
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np

LIMIT = 64 * 1024  # every hostile file is at most this large
CIFAR10_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer",
                 b"dog", b"frog", b"horse", b"ship", b"truck"]
C10_PY = "cifar-10-batches-py"
C10_BIN = "cifar-10-batches-bin"
C10_BATCHES = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]


# -- valid files ------------------------------------------------------------------------------

def cifar_batch(n: int = 2, seed: int = 0) -> bytes:
    """A CIFAR-10 python-version batch of ``n`` images, as Python 3 pickles it (protocol 2)."""
    rng = np.random.default_rng(seed)
    return pickle.dumps({b"batch_label": b"b", b"labels": rng.integers(0, 10, n).tolist(),
                         b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         b"filenames": [b"x.png"] * n}, protocol=2)


def cifar_meta() -> bytes:
    """``batches.meta`` of CIFAR-10's python version."""
    return pickle.dumps({b"label_names": CIFAR10_NAMES, b"num_vis": 3072}, protocol=2)


def write_cifar_python(root: Path, **replace: bytes) -> Path:
    """``root/cifar-10-batches-py`` with two-image batches; ``replace`` maps file names to
    other contents (e.g. ``data_batch_1=hostile``). Returns the directory."""
    directory = root / C10_PY
    directory.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(C10_BATCHES):
        (directory / name).write_bytes(replace.get(name, cifar_batch(2, i)))
    (directory / "batches.meta").write_bytes(replace.get("batches.meta", cifar_meta()))
    return directory


def cifar_records(n: int = 2, seed: int = 0) -> bytes:
    """``n`` CIFAR-10 binary records: <label byte><3072 pixel bytes>."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, (n, 1), dtype=np.uint8)
    return np.concatenate([labels, rng.integers(0, 256, (n, 3072), dtype=np.uint8)], 1).tobytes()


def write_cifar_binary(root: Path, **replace: bytes) -> Path:
    """``root/cifar-10-batches-bin`` with two-record batches (``replace`` as above)."""
    directory = root / C10_BIN
    directory.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(C10_BATCHES):
        (directory / f"{name}.bin").write_bytes(replace.get(f"{name}.bin", cifar_records(2, i)))
    (directory / "batches.meta.txt").write_bytes(
        replace.get("batches.meta.txt", b"\n".join(CIFAR10_NAMES) + b"\n"))
    return directory


def idx(array: np.ndarray) -> bytes:
    """An unsigned-byte IDX file: 00 00 08 <ndim>, big-endian uint32 dims, data."""
    return bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + \
        array.astype(np.uint8).tobytes()


def write_idx(directory: Path, gz: bool, n: int = 3, **replace: bytes) -> Path:
    """MNIST's four IDX files (``n`` images per split) in ``directory``; ``replace`` maps
    ``"images"`` / ``"labels"`` to other contents of the *test* split's files (written as
    given, not re-compressed)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        for kind, array in (("images", rng.integers(0, 256, (n, 28, 28))),
                            ("labels", rng.integers(0, 10, n))):
            data = idx(array)
            path = directory / f"{prefix}-{kind}-idx{array.ndim}-ubyte"
            if gz:
                path = path.with_name(path.name + ".gz")
                data = gzip.compress(data, mtime=0)
            if prefix == "t10k" and kind in replace:
                data = replace[kind]
            path.write_bytes(data)
    return directory


def test_file(directory: Path, kind: str, gz: bool) -> Path:
    """Path of the test split's ``"images"`` or ``"labels"`` file written by write_idx."""
    ndim = 3 if kind == "images" else 1
    return directory / f"t10k-{kind}-idx{ndim}-ubyte{'.gz' if gz else ''}"


def png(width: int, height: int, rows: bytes | None = None, bit_depth: int = 8,
        colour: int = 2) -> bytes:
    """A PNG of the given size (colour type 2 = RGB, 0 = grey); ``rows`` the filtered scan
    lines before compression (default: all zero)."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    if rows is None:
        rows = bytes((width * channels * bit_depth + 7) // 8 + 1) * height

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + \
            struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + \
        chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b"")


def write_imagefolder(root: Path, **replace: bytes) -> Path:
    """``root/<class>/<name>.png``: two 8x8 RGB images in each of two classes; ``replace``
    maps ``"a/1"``-style keys to other PNG bytes."""
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(2):
            rows = b"".join(b"\0" + rng.integers(0, 256, 24, dtype=np.uint8).tobytes()
                            for _ in range(8))
            (root / cls / f"{i}.png").write_bytes(replace.get(f"{cls}/{i}", png(8, 8, rows)))
    return root


# -- hostile CIFAR pickles, opcode by opcode (protocol 2, as an attacker writes them) ---------

def _int(value: int) -> bytes:
    if 0 <= value < 256:
        return b"K" + bytes([value])
    if -(1 << 31) <= value < (1 << 31):
        return b"J" + struct.pack("<i", value)
    raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw  # LONG1


def _str(value: bytes) -> bytes:  # a Python 2 str: bytes under encoding="bytes"
    return (b"U" + bytes([len(value)]) if len(value) < 256
            else b"T" + struct.pack("<i", len(value))) + value


def _tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def _global(module: str, name: str) -> bytes:
    return f"c{module}\n{name}\n".encode()


def _dtype(spec: bytes, state: bytes | None = None) -> bytes:
    out = _global("numpy", "dtype") + _tuple(_str(spec), _int(0), _int(1)) + b"R"
    return out if state is None else out + state + b"b"


def _dict(entries: list[tuple[bytes, bytes]]) -> bytes:
    return b"\x80\x02}(" + b"".join(_str(k) + v for k, v in entries) + b"u."


def aliased_array(shape: tuple[int, ...], spec: bytes, buffer: bytes) -> bytes:
    """``numpy.ndarray(shape, dtype, buffer, 0, strides=0...)``: one buffer repeated."""
    return (_global("numpy", "ndarray")
            + _tuple(_tuple(*map(_int, shape)), _dtype(spec), _str(buffer), _int(0),
                     _tuple(*(_int(0) for _ in shape))) + b"R")


def pickle_aliased_arrays(n: int = 1_000_000) -> bytes:
    """A CIFAR batch whose data (n, 3072) uint8 and labels (n,) int64 alias 1 and 8 bytes."""
    return _dict([(b"data", aliased_array((n, 3072), b"u1", b"x")),
                  (b"labels", aliased_array((n,), b"i8", bytes(8)))])


def uninitialised_array(shape: tuple[int, ...], typecode: bytes) -> bytes:
    """``_reconstruct(ndarray, shape, typecode)`` with no state: numpy allocates ``shape``."""
    return (_global("numpy.core.multiarray", "_reconstruct")
            + _tuple(_global("numpy", "ndarray"), _tuple(*map(_int, shape)), _str(typecode))
            + b"R")


def pickle_uninitialised_arrays(n: int = 250_000) -> bytes:
    """A CIFAR batch whose data and labels are unfilled arrays of any shape (heap garbage)."""
    return _dict([(b"data", uninitialised_array((n, 3072), b"B")),
                  (b"labels", uninitialised_array((n,), b"l"))])


def pickle_nested_labels(width: int = 600) -> bytes:
    """A one-image batch whose labels list nests one list ``width`` times in three levels
    (``width ** 3`` integers for numpy to convert, from a few KB)."""
    inner = b"]q\x01(" + _int(0) * width + b"e0"          # memo 1: [0] * width
    middle = b"]q\x02(" + b"h\x01" * width + b"e0"        # memo 2: [memo 1] * width
    outer = b"](" + b"h\x02" * width + b"e"               # [memo 2] * width
    return _dict([(b"data", _array(np.zeros((1, 3072), np.uint8))),
                  (b"labels", inner + middle + outer)])


def _array(array: np.ndarray) -> bytes:
    """An honest uint8 array, spelled as numpy pickles it (reconstruct, then BUILD)."""
    return (uninitialised_array((0,), b"b") + _tuple(
        _int(1), _tuple(*map(_int, array.shape)),
        _dtype(b"u1", _tuple(_int(3), _str(b"|"), b"NNN", _int(-1), _int(-1), _int(0))),
        b"\x89", _str(array.tobytes())) + b"b")


def _state(n: int, dtype: bytes, raw: bytes) -> bytes:
    return _tuple(_int(1), _tuple(_int(n)), dtype, b"\x89", _str(raw))


def pickle_subarray_dtype(n: int = 1000) -> bytes:
    """Labels whose dtype state adds a (1000, 1000) sub-array its 1-byte item size does not
    cover: an inconsistent type numpy's own pickles never hold."""
    state = _tuple(_int(3), _str(b"|"), _tuple(_dtype(b"u1"), _tuple(_int(1000), _int(1000))),
                   b"NN", _int(-1), _int(-1), _int(0))
    labels = uninitialised_array((0,), b"b") + _state(n, _dtype(b"u1", state), bytes(n)) + b"b"
    return _dict([(b"data", _array(np.zeros((1, 3072), np.uint8))), (b"labels", labels)])


def pickle_misc_abuse() -> dict[str, tuple[bytes, str]]:
    """Smaller misuses of the allowed globals -> (pickle, what the refusal says)."""
    fresh = uninitialised_array((0,), b"b")
    return {
        "object-dtype": (_dict([(b"x", _dtype(b"O"))]), "numpy type"),
        "record-dtype": (_dict([(b"x", _dtype(b"V8"))]), "numpy type"),
        "buffer-too-short": (_dict([(b"x", fresh + _state(12, _dtype(b"u1"), bytes(4)) + b"b")]),
                             "needs 12 bytes but its buffer holds 4"),
        "buffer-too-long": (_dict([(b"x", fresh + _state(2, _dtype(b"i4"), bytes(9)) + b"b")]),
                            "needs 8 bytes but its buffer holds 9"),
        "build-on-a-dict": (b"\x80\x02}}b.",
                            "sets the state of a dict"),
        "second-build": (_dict([(b"x", fresh + _state(1, _dtype(b"u1"), b"a") + b"b"
                                 + _state(1, _dtype(b"u1"), b"b") + b"b")]),
                         "sets the state of a ndarray"),
        "scalar-wrong-size": (_dict([(b"x", _global("numpy.core.multiarray", "scalar")
                                      + _tuple(_dtype(b"i8"), _str(b"abc")) + b"R")]),
                              "wrong size"),
        "ndarray-as-callable-type": (_dict([(b"x", _global("numpy", "ndarray")
                                             + _tuple(_tuple(_int(3))) + b"R")]),
                                     "numpy.ndarray directly"),
    }


def pickle_repeated_names(size: int = 30_000, count: int = 16_000) -> bytes:
    """A ``batches.meta`` whose label_names repeats one ``size``-byte name ``count`` times."""
    names = b"](" + _str(b"n" * size) + b"q\x01" + b"h\x01" * (count - 1) + b"e"
    return _dict([(b"label_names", names)])


# -- hostile IDX and PNG --------------------------------------------------------------------

def gzip_zeros(header: bytes, zeros: int = 60 << 20) -> bytes:
    """``header`` followed by ``zeros`` zero bytes, gzipped (deflate's best ratio, about
    1000:1: the default 60 MiB fit in some 60 KB)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip wrapper
    out = compressor.compress(header)
    block = bytes(1 << 20)
    for start in range(0, zeros, len(block)):
        out += compressor.compress(block[:zeros - start])
    return out + compressor.flush()


def idx_header(*dims: int) -> bytes:
    """The header of an unsigned-byte IDX file of the given dimensions."""
    return bytes([0, 0, 8, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)


def png_bilevel_bomb(side: int = 13_000) -> bytes:
    """A complete, valid 1-bit PNG of ``side`` x ``side`` pixels (169 M pixels by default,
    under Pillow's own bomb limit) in about 20 KB."""
    return png(side, side, bit_depth=1, colour=0)
