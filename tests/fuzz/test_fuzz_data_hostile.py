"""Hostile dataset files of at most 64 KB end in attnconv's own error, with bounded memory.

Also: the restricted unpickler's refusals of every misuse of the numpy globals it allows.

Each case is a small file that, read naively, makes a reader allocate gigabytes (or read
memory it does not own). Every case is loaded through ``load_dataset`` in a forked child of one
fresh interpreter (``fuzzkit.measure_many``), which reports the exception and how much the
load raised the process's peak resident memory; the child's address space is capped 1 GiB
above its size, so a regression fails with MemoryError instead of exhausting the machine.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import datafiles as f
import numpy as np
import pytest
from fuzzkit import MB, Measured, measure_many


@dataclass(frozen=True)
class Case:
    """A hostile file: how to write it, where it is, what must come out."""

    dataset: str
    write: Callable[[Path], Path]  # writes the dataset under the given root, returns data_dir
    hostile: str  # the hostile file, relative to data_dir
    error: str  # the exception class (in attnconv.errors)
    says: tuple[str, ...]  # what the message must contain
    budget: int = 200 * MB  # largest allowed rise of the peak resident memory


DECLARED = 60_000 * 28 * 28  # what the header of the "declared-size" IDX case announces

CASES = {
    # numpy.ndarray(shape, dtype, buffer, 0, strides=0): 150 bytes -> a 3 GB contiguous copy
    "cifar-python-aliased-buffer": Case(
        "cifar10", lambda root: f.write_cifar_python(
            root, data_batch_1=f.pickle_aliased_arrays()).parent,
        f"{f.C10_PY}/data_batch_1", "UnsafePickleError", ("data_batch_1", "numpy.ndarray")),
    # _reconstruct(ndarray, (250000, 3072), "B") without state: heap garbage of any size
    "cifar-python-uninitialised-array": Case(
        "cifar10", lambda root: f.write_cifar_python(
            root, data_batch_1=f.pickle_uninitialised_arrays()).parent,
        f"{f.C10_PY}/data_batch_1", "UnsafePickleError", ("data_batch_1", "_reconstruct")),
    # labels = one list nested 600 x 600 x 600 times: 7 KB -> 1.7 GB of int64
    "cifar-python-nested-labels": Case(
        "cifar10", lambda root: f.write_cifar_python(
            root, data_batch_1=f.pickle_nested_labels()).parent,
        f"{f.C10_PY}/data_batch_1", "DatasetError", ("data_batch_1", "labels")),
    # label_names = one 30 KB name 16000 times: 62 KB -> 480 MB of decoded strings
    "cifar-python-repeated-names": Case(
        "cifar10", lambda root: f.write_cifar_python(
            root, **{"batches.meta": f.pickle_repeated_names()}).parent,
        f"{f.C10_PY}/batches.meta", "DatasetError", ("batches.meta", "class names")),
    # gzip IDX whose header declares 2**32 - 1 images: refused before decompressing anything
    "idx-gz-absurd-header": Case(
        "mnist", lambda root: f.write_idx(root / "mnist", gz=True, images=f.gzip_zeros(
            f.idx_header(0xFFFF_FFFF, 28, 28))),
        "t10k-images-idx3-ubyte.gz", "DatasetError", ("t10k-images", "more than the"),
        budget=16 * MB),
    # gzip IDX declaring 47 MB that expands to 60 MiB: decompressed only to the declared size
    "idx-gz-longer-than-declared": Case(
        "mnist", lambda root: f.write_idx(root / "mnist", gz=True, images=f.gzip_zeros(
            f.idx_header(60_000, 28, 28)), labels=f.gzip_zeros(f.idx_header(60_000), 60_000)),
        "t10k-images-idx3-ubyte.gz", "DatasetError", ("t10k-images", "trailing bytes"),
        budget=DECLARED + 16 * MB),
    # a valid 1-bit 13000x13000 PNG of 20 KB: 1.2 GB once decoded and converted to RGB
    "png-bilevel-bomb": Case(
        "imagefolder", lambda root: f.write_imagefolder(
            root / "images", **{"a/0": f.png_bilevel_bomb()}),
        "a/0.png", "DatasetError", ("a/0.png", "13000x13000", "ATTNCONV_MAX_IMAGE_PIXELS")),
}


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Measured]]:
    """Every case written and loaded once (one interpreter, one fork per case)."""
    split = {"mnist": "test"}
    dirs = {name: case.write(tmp_path_factory.mktemp(name)) for name, case in CASES.items()}
    calls = [f"load_dataset({c.dataset!r}, {split.get(c.dataset, 'train')!r}, "
             f"{str(dirs[n])!r})" for n, c in CASES.items()]
    results = measure_many("from attnconv.data import load_dataset", calls, cap=1024 * MB)
    return {name: (dirs[name], r) for name, r in zip(CASES, results, strict=True)}


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_file_fails_cleanly_in_bounded_memory(
    name: str, measured: dict[str, tuple[Path, Measured]]
) -> None:
    case = CASES[name]
    data_dir, result = measured[name]
    hostile = data_dir / case.hostile
    assert hostile.stat().st_size <= f.LIMIT, "the hostile file must stay small"
    assert result.error == f"attnconv.errors.{case.error}", (result.error, result.message)
    for text in case.says:
        assert text in result.message, result.message
    assert str(hostile) in result.message
    assert 0 <= result.rise < case.budget, (
        f"loading {name} raised the peak memory by {result.rise_mb:.0f} MiB "
        f"(budget {case.budget / MB:.0f} MiB)")


def test_the_measurement_sees_a_blow_up() -> None:
    """The probe itself: an allocation of 300 MB is seen, one of 3 GB hits the cap."""
    small, large = measure_many("import numpy as np",
                                ["np.ones(300 << 20, np.uint8)", "np.ones(3 << 30, np.uint8)"])
    assert small.error is None and small.rise > 290 * MB
    assert large.error is not None and "MemoryError" in large.error


def test_pixel_limit_can_be_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A genuine large image loads once the limit is raised; a bad value is a ConfigError."""
    from attnconv.data import load_dataset
    from attnconv.errors import ConfigError, DatasetError

    root = f.write_imagefolder(tmp_path / "images")
    for cls in ("a", "b"):
        for i in range(2):
            (root / cls / f"{i}.png").write_bytes(f.png(300, 200))
    monkeypatch.setenv("ATTNCONV_MAX_IMAGE_PIXELS", "50000")
    with pytest.raises(DatasetError, match=r"300x200 image \(60000 pixels\).*limit of 50000"):
        load_dataset("imagefolder", "train", root)
    monkeypatch.setenv("ATTNCONV_MAX_IMAGE_PIXELS", "60000")
    arrays = load_dataset("imagefolder", "train", root)
    assert arrays.images.shape == (4, 200, 300, 3)
    assert not arrays.images.any()
    monkeypatch.setenv("ATTNCONV_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ConfigError, match="ATTNCONV_MAX_IMAGE_PIXELS"):
        load_dataset("imagefolder", "train", root)


def test_an_image_of_another_size_is_refused_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second image's header already disagrees with the first: it is never decoded."""
    from PIL import Image

    from attnconv.data import load_dataset
    from attnconv.errors import DatasetError

    root = f.write_imagefolder(tmp_path / "images", **{"b/1": f.png(4000, 4000)})
    decoded = []
    convert = Image.Image.convert
    monkeypatch.setattr(Image.Image, "convert",
                        lambda self, *a, **k: decoded.append(self.size) or convert(self, *a, **k))
    with pytest.raises(DatasetError, match=r"b/1.png is 4000x4000 but .*a/0.png is 8x8"):
        load_dataset("imagefolder", "train", root)
    assert decoded == [(8, 8)] * 3


@pytest.mark.parametrize("fmt", ["BMP", "GIF", "TIFF", "ICO"])
def test_only_png_and_jpeg_content_is_decoded(tmp_path: Path, fmt: str) -> None:
    """Another format under a .png name is refused, not handed to another Pillow plugin."""
    import io

    from PIL import Image

    from attnconv.data import load_dataset
    from attnconv.errors import DatasetError

    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, format=fmt)
    root = f.write_imagefolder(tmp_path / "images", **{"a/1": out.getvalue()})
    with pytest.raises(DatasetError, match=r"cannot read image .*a/1.png"):
        load_dataset("imagefolder", "train", root)


def test_idx_headers_must_agree_before_any_payload_is_read(tmp_path: Path) -> None:
    """Images of another size or a label count that differs: refused from the headers."""
    from attnconv.data import load_dataset
    from attnconv.errors import DatasetError

    root = f.write_idx(tmp_path / "a", gz=False, images=f.idx(np.zeros((3, 32, 32))))
    with pytest.raises(DatasetError, match="images of 32x32 pixels; mnist images are 28x28"):
        load_dataset("mnist", "test", root)
    root = f.write_idx(tmp_path / "b", gz=True, labels=gzip.compress(f.idx_header(4_000_000)))
    with pytest.raises(DatasetError, match="4000000 labels for 3 images"):
        load_dataset("mnist", "test", root)


# -- the unpickler refuses every misuse of the globals it allows --------------------------------

def _unpickler_cases() -> dict[str, tuple[bytes, str]]:
    return {"aliased-buffer": (f.pickle_aliased_arrays(10), "numpy.ndarray directly"),
            "uninitialised-array": (f.pickle_uninitialised_arrays(10), "_reconstruct"),
            "subarray-dtype": (f.pickle_subarray_dtype(10), "byte order"),
            **f.pickle_misc_abuse()}


@pytest.mark.parametrize("name", list(_unpickler_cases()))
def test_unpickler_refuses_misused_numpy_globals(tmp_path: Path, name: str) -> None:
    from attnconv.data.safe_pickle import load_pickle
    from attnconv.errors import UnsafePickleError

    data, says = _unpickler_cases()[name]
    with pytest.raises(UnsafePickleError, match=r"refused to load .*batch") as info:
        load_pickle(tmp_path / "batch", data)
    assert says in str(info.value)


@pytest.mark.parametrize("protocol", [2, 4])
def test_unpickler_still_reads_every_plain_number_type(tmp_path: Path, protocol: int) -> None:
    """What numpy itself pickles (any byte order) loads exactly as ``pickle.loads`` does."""
    import pickle

    from attnconv.data.safe_pickle import load_pickle

    value = {b"u8": np.arange(6, dtype=np.uint8).reshape(2, 3),
             b"big": np.arange(4, dtype=">i4"), b"f4": np.linspace(0, 1, 5, dtype=np.float32),
             b"bool": np.array([True, False]), b"fortran": np.asfortranarray(np.eye(3)),
             b"scalars": [np.int64(7), np.float64(0.5)]}
    data = pickle.dumps(value, protocol=protocol)
    loaded, reference = load_pickle(tmp_path / "f", data), pickle.loads(data)
    assert loaded.keys() == reference.keys()
    for key, expected in reference.items():
        if key == b"scalars":
            assert loaded[key] == expected == [7, 0.5]
            assert [type(v) for v in loaded[key]] == [np.int64, np.float64]
            continue
        assert loaded[key].dtype == expected.dtype and loaded[key].shape == expected.shape
        np.testing.assert_array_equal(loaded[key], expected)
        np.testing.assert_array_equal(loaded[key], value[key])
