"""Fuzzing every dataset reader: mutated files end in a correct load or attnconv's own error.

Each test starts from a valid dataset directory, replaces one file with a hypothesis-mutated
copy (bit flips, truncation, insertion, deletion, duplicated runs, random or extreme header
values; see ``fuzzkit.mutations``) or a file with a random header, and loads the split. Only
two outcomes are allowed: a load whose arrays satisfy the reader's contract, or an
:class:`~attnconv.errors.AttnconvError` naming the file. Every example runs under an
address-space cap 512 MiB above the process's size, so one that makes a reader allocate more
fails with MemoryError. Deterministic (``derandomize=True``), a few seconds per reader.
"""

from __future__ import annotations

import gzip
import io
import math
import shutil
from pathlib import Path

import datafiles as f
import numpy as np
import pytest
from fuzzkit import FUZZ_SETTINGS, memory_cap, mutations
from hypothesis import given
from hypothesis import strategies as st

from attnconv.data import load_dataset
from attnconv.errors import AttnconvError


def _load(dataset: str, split: str, data_dir: Path, hostile: Path, classes: int) -> None:
    """Load under the memory cap; accept a valid result or our error naming ``hostile``."""
    try:
        with memory_cap():
            arrays = load_dataset(dataset, split, data_dir)
    except AttnconvError as error:
        assert hostile.name in str(error), str(error)
        return
    images, labels = arrays.images, arrays.labels
    assert images.ndim == 4 and images.dtype == np.uint8 and len(images) > 0
    assert labels.dtype == np.int64 and labels.shape == (len(images),)
    assert labels.min() >= 0 and labels.max() < classes == len(arrays.classes)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _fresh(root: Path, name: str) -> Path:
    directory = root / name
    shutil.rmtree(directory, ignore_errors=True)
    return directory


# -- CIFAR python version -------------------------------------------------------------------

@FUZZ_SETTINGS
@given(data=mutations(f.cifar_batch(2)))
def test_cifar_python_batch(root: Path, data: bytes) -> None:
    directory = f.write_cifar_python(_fresh(root, "c10py"), data_batch_1=data)
    _load("cifar10", "train", directory.parent, directory / "data_batch_1", 10)


@FUZZ_SETTINGS
@given(data=mutations(f.cifar_meta()))
def test_cifar_python_meta(root: Path, data: bytes) -> None:
    directory = f.write_cifar_python(_fresh(root, "c10meta"), **{"batches.meta": data})
    _load("cifar10", "test", directory.parent, directory / "batches.meta", 10)


_SIZES = st.sampled_from([0, 1, 2, 3, 3072, 2**20, 2**31 - 1, 2**40])
_SHAPES = st.lists(_SIZES, max_size=3).map(tuple)
_SPECS = st.sampled_from([b"u1", b"i8", b"<i4", b">i8", b"f8", b"b1", b"O", b"V8", b"S5"])


@st.composite
def _numpy_value(draw: st.DrawFn, shape: tuple[int, ...], spec: bytes) -> bytes:
    """An array of ``shape`` and ``spec`` spelled with the allowed numpy globals, made in
    one of three ways: aliasing a small buffer, left uninitialised, or built from bytes."""
    kind = draw(st.sampled_from(["aliased", "uninitialised", "built"]))
    if kind == "aliased":
        return f.aliased_array(shape or (1,), spec, draw(st.binary(min_size=1, max_size=16)))
    if kind == "uninitialised":
        return f.uninitialised_array(shape, draw(st.sampled_from([b"b", b"B", b"l", b"O"])))
    raw = draw(st.binary(max_size=64))
    state = f._tuple(f._int(1), f._tuple(*map(f._int, shape)), f._dtype(spec), b"\x89",
                     f._str(raw))
    return f.uninitialised_array((0,), b"b") + state + b"b"


@st.composite
def _nested_list(draw: st.DrawFn) -> bytes:
    """A list nesting one list ``width`` times per level: tiny, huge once expanded."""
    depth, width = draw(st.integers(1, 3)), draw(st.sampled_from([1, 2, 10, 600]))
    out = b"]q\x01(" + f._int(draw(st.integers(0, 300))) * width + b"e"
    for level in range(2, depth + 1):
        out += b"0]q" + bytes([level]) + b"(" + (b"h" + bytes([level - 1])) * width + b"e"
    return out


@st.composite
def _random_batch(draw: st.DrawFn) -> bytes:
    """A batch dict whose data and labels have random array headers, biased towards the
    shapes a CIFAR batch has ((n, 3072) and (n,)) so that the reader's later steps run."""
    n = draw(st.sampled_from([1, 2, 3, 2**20, 2**31 - 1]))
    data_shape = draw(st.one_of(st.just((n, 3072)), _SHAPES))
    data = draw(_numpy_value(data_shape, draw(st.one_of(st.just(b"u1"), _SPECS))))
    labels_shape = draw(st.one_of(st.just((n,)), _SHAPES))
    labels = draw(st.one_of(_numpy_value(labels_shape, draw(_SPECS)), _nested_list()))
    return f._dict([(b"data", data), (b"labels", labels)])


@FUZZ_SETTINGS
@given(batch=_random_batch())
def test_cifar_python_random_arrays(root: Path, batch: bytes) -> None:
    """Random array headers (sizes up to 2**40, any dtype, any construction) as a batch."""
    directory = f.write_cifar_python(_fresh(root, "c10arr"), data_batch_1=batch)
    _load("cifar10", "train", directory.parent, directory / "data_batch_1", 10)


@FUZZ_SETTINGS
@given(count=st.sampled_from([0, 9, 10, 11, 1000, 100_000]),
       size=st.sampled_from([0, 1, 20, 256, 257, 30_000]))
def test_cifar_python_random_names(root: Path, count: int, size: int) -> None:
    """label_names repeating one name of ``size`` bytes ``count`` times (via the memo)."""
    names = (b"](" + f._str(b"n" * size) + b"q\x01" + b"h\x01" * max(count - 1, 0) + b"e"
             if count else b"]")
    meta = f._dict([(b"label_names", names)])
    directory = f.write_cifar_python(_fresh(root, "c10names"), **{"batches.meta": meta})
    _load("cifar10", "test", directory.parent, directory / "batches.meta", 10)


# -- CIFAR binary version -------------------------------------------------------------------

_META_TXT = b"\n".join(f.CIFAR10_NAMES) + b"\n"


@FUZZ_SETTINGS
@given(data=st.one_of(mutations(f.cifar_records(2), header=8),
                      st.binary(max_size=3 * 3073 + 2)))
def test_cifar_binary_batch(root: Path, data: bytes) -> None:
    directory = f.write_cifar_binary(_fresh(root, "c10bin"), **{"data_batch_1.bin": data})
    _load("cifar10", "train", directory.parent, directory / "data_batch_1.bin", 10)


@FUZZ_SETTINGS
@given(data=mutations(_META_TXT))
def test_cifar_binary_meta(root: Path, data: bytes) -> None:
    directory = f.write_cifar_binary(_fresh(root, "c10bintxt"), **{"batches.meta.txt": data})
    _load("cifar10", "test", directory.parent, directory / "batches.meta.txt", 10)


# -- IDX, raw and gzipped -------------------------------------------------------------------

_IDX_IMAGES = f.idx(np.random.default_rng(1).integers(0, 256, (3, 28, 28)))
_IDX_LABELS = f.idx(np.random.default_rng(2).integers(0, 10, 3))


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@FUZZ_SETTINGS
@given(kind=st.sampled_from(["images", "labels"]), data=st.data())
def test_idx_mutated_content(root: Path, gz: bool, kind: str, data: st.DataObject) -> None:
    """Mutations of the uncompressed file (recompressed for .gz, so they reach the parser)."""
    good = _IDX_IMAGES if kind == "images" else _IDX_LABELS
    content = data.draw(mutations(good, header=16))
    raw = gzip.compress(content, mtime=0) if gz else content
    directory = f.write_idx(_fresh(root, f"idx-{gz}"), gz=gz, **{kind: raw})
    _load("mnist", "test", directory, f.test_file(directory, kind, gz), 10)


@FUZZ_SETTINGS
@given(kind=st.sampled_from(["images", "labels"]), data=st.data())
def test_idx_mutated_gzip_stream(root: Path, kind: str, data: st.DataObject) -> None:
    """Mutations of the compressed bytes: damaged gzip framing, CRC, lengths."""
    good = gzip.compress(_IDX_IMAGES if kind == "images" else _IDX_LABELS, mtime=0)
    stream = data.draw(mutations(good, header=24))
    directory = f.write_idx(_fresh(root, "idx-stream"), gz=True, **{kind: stream})
    _load("mnist", "test", directory, f.test_file(directory, kind, True), 10)


_DIMS = st.sampled_from([0, 1, 3, 27, 28, 29, 60_000, 2**24, 2**31, 2**32 - 1])


@FUZZ_SETTINGS
@given(gz=st.booleans(), dims=st.tuples(_DIMS, _DIMS, _DIMS), labels=_DIMS,
       payload=st.integers(0, 5000))
def test_idx_random_headers(root: Path, gz: bool, dims: tuple[int, int, int], labels: int,
                            payload: int) -> None:
    """Headers declaring any dimensions (up to 2**32 - 1 each) over a small payload."""
    images = f.idx_header(*dims) + bytes(min(payload, math.prod(dims)))
    label_file = f.idx_header(labels) + bytes(min(labels, 5000))
    pack = (lambda b: gzip.compress(b, mtime=0)) if gz else (lambda b: b)
    directory = f.write_idx(_fresh(root, "idx-hdr"), gz=gz, images=pack(images),
                            labels=pack(label_file))
    try:
        with memory_cap():
            arrays = load_dataset("mnist", "test", directory)
    except AttnconvError as error:
        assert "t10k-" in str(error), str(error)
        return
    assert arrays.images.shape == (dims[0], 28, 28, 1) and dims[1:] == (28, 28)


# -- image folders --------------------------------------------------------------------------

def _jpeg() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (8, 8, 3), dtype=np.uint8)) \
        .save(out, format="JPEG", quality=90)
    return out.getvalue()


@FUZZ_SETTINGS
@given(which=st.sampled_from(["png", "jpeg"]), data=st.data())
def test_imagefolder_mutated_files(root: Path, which: str, data: st.DataObject) -> None:
    good = f.png(8, 8) if which == "png" else _jpeg()
    mutated = data.draw(mutations(good, header=40))
    directory = f.write_imagefolder(_fresh(root, "img"), **{"a/0": f.png(8, 8)})
    hostile = directory / "b" / f"1.{which}"
    (directory / "b" / "1.png").unlink()
    hostile.write_bytes(mutated)
    _load("imagefolder", "train", directory, hostile, 2)


_SIDES = st.sampled_from([0, 1, 8, 9, 4096, 4097, 65_535, 2**31 - 1, 2**32 - 1])


@FUZZ_SETTINGS
@given(width=_SIDES, height=_SIDES, depth=st.sampled_from([1, 2, 4, 8, 16, 3]),
       colour=st.sampled_from([0, 2, 4, 6]))
def test_imagefolder_random_png_headers(root: Path, width: int, height: int, depth: int,
                                        colour: int) -> None:
    """PNG headers (valid CRC) declaring any size and pixel format, over a tiny image stream."""
    header = f.png(width, height, rows=bytes(64), bit_depth=depth, colour=colour)
    directory = f.write_imagefolder(_fresh(root, "img-hdr"), **{"a/0": header})
    _load("imagefolder", "train", directory, directory / "a" / "0.png", 2)
