"""CIFAR-10 and CIFAR-100 from the official distribution files (python or binary version).

Both versions store each image as 3072 bytes: the 1024 red values of the 32x32 image in row
order, then green, then blue. The python version pickles dicts (read with
:mod:`attnconv.data.safe_pickle`); the binary version prefixes each image with its label
byte(s): one for CIFAR-10, two (coarse, fine) for CIFAR-100, of which we use the fine label.

``data_dir`` may be the directory the archive was extracted into (holding e.g.
``cifar-10-batches-py/``) or the extracted directory itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from attnconv.data.arrays import ImageArrays
from attnconv.data.files import (
    DATA_DIR_ENV,
    corrupt_file_error,
    default_data_dir,
    missing_files_error,
    read_bytes,
)
from attnconv.data.safe_pickle import load_pickle
from attnconv.errors import DatasetError

SOURCE = "https://www.cs.toronto.edu/~kriz/cifar.html"
_PIXELS = 3 * 32 * 32
_MAX_FILE = 200 * 1024 * 1024  # largest official file is ~155 MB (CIFAR-100 python train)
_COARSE_CLASSES = 20  # CIFAR-100 binary: first label byte of each record
_MAX_NAME = 256  # longest class name accepted from a meta file (official ones: < 20)


@dataclass(frozen=True)
class CifarLayout:
    """One extracted CIFAR archive: its directory, files and how labels are stored."""

    dataset: str
    binary: bool
    dirname: str
    archive: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    num_classes: int
    label_key: str  # python version: the dict key of the labels we use
    names_key: str  # python version: the meta dict key of the class names
    label_bytes: int  # binary version: label bytes before each image; the last one is used

    def split_files(self, split: str) -> tuple[str, ...]:
        """The data files of ``split`` ("train" or "test")."""
        return self.train_files if split == "train" else self.test_files

    @property
    def all_files(self) -> tuple[str, ...]:
        """Every file a complete extraction holds (that we read)."""
        return (*self.train_files, *self.test_files, self.meta_file)


_C10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
LAYOUTS: dict[str, tuple[CifarLayout, CifarLayout]] = {
    "cifar10": (
        CifarLayout("cifar10", False, "cifar-10-batches-py", "cifar-10-python.tar.gz",
                    _C10_TRAIN, ("test_batch",), "batches.meta", 10,
                    "labels", "label_names", 0),
        CifarLayout("cifar10", True, "cifar-10-batches-bin", "cifar-10-binary.tar.gz",
                    tuple(f + ".bin" for f in _C10_TRAIN), ("test_batch.bin",),
                    "batches.meta.txt", 10, "", "", 1),
    ),
    "cifar100": (
        CifarLayout("cifar100", False, "cifar-100-python", "cifar-100-python.tar.gz",
                    ("train",), ("test",), "meta", 100, "fine_labels", "fine_label_names", 0),
        CifarLayout("cifar100", True, "cifar-100-binary", "cifar-100-binary.tar.gz",
                    ("train.bin",), ("test.bin",), "fine_label_names.txt", 100, "", "", 2),
    ),
}


def _fix(layout: CifarLayout) -> str:
    return (
        f"Download {layout.archive} from {SOURCE}, extract it (tar xzf {layout.archive}) "
        "and pass its parent directory as data_dir."
    )


def find_layout(dataset: str, split: str, data_dir: Path | None) -> tuple[CifarLayout, Path]:
    """Locate the extracted archive of ``dataset`` under ``data_dir`` and check it is complete.

    Looks in ``data_dir`` itself, then in each version's directory below it; the first
    directory holding any file of a version decides. Raises DatasetError listing the expected
    files when nothing is found or the files ``split`` needs are missing.
    """
    root = default_data_dir() if data_dir is None else Path(data_dir)
    layouts = LAYOUTS[dataset]
    candidates = [(layout, root) for layout in layouts]
    candidates += [(layout, root / layout.dirname) for layout in layouts]
    for layout, directory in candidates:
        if not any((directory / name).is_file() for name in layout.all_files):
            continue
        needed = (*layout.split_files(split), layout.meta_file)
        missing = [name for name in needed if not (directory / name).is_file()]
        if missing:
            raise DatasetError(
                f"{dataset} in {directory} is incomplete: missing {', '.join(missing)} "
                f"(a complete {layout.dirname} holds {', '.join(layout.all_files)}). "
                + _fix(layout)
            )
        return layout, directory
    expected = [f"{lay.dirname}/{{{','.join(lay.all_files)}}}" for lay in layouts]
    raise missing_files_error(
        dataset, sorted({d for _, d in candidates}), expected, SOURCE,
        f"Download {layouts[0].archive} (or {layouts[1].archive}), extract it and pass its "
        f"parent directory as data_dir (or set ${DATA_DIR_ENV}).",
    )


def _to_hwc(flat: np.ndarray) -> np.ndarray:
    """(N, 3072) planar RGB rows -> (N, 32, 32, 3)."""
    return np.ascontiguousarray(flat.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def _check_labels(path: Path, labels: np.ndarray, layout: CifarLayout) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= layout.num_classes):
        raise corrupt_file_error(
            path, f"labels outside 0..{layout.num_classes - 1}", _fix(layout)
        )


def _key(mapping: dict[Any, Any], key: str, path: Path, layout: CifarLayout) -> Any:
    """``mapping[key]`` whether the pickle stored keys as bytes (Python 2) or str."""
    for candidate in (key.encode(), key):
        if candidate in mapping:
            return mapping[candidate]
    raise corrupt_file_error(path, f"no '{key}' entry", _fix(layout))


def _read_python_batch(path: Path, layout: CifarLayout) -> tuple[np.ndarray, np.ndarray]:
    batch = load_pickle(path, read_bytes(path, _MAX_FILE, _fix(layout)))
    if not isinstance(batch, dict):
        raise corrupt_file_error(path, f"holds a {type(batch).__name__}, not a dict",
                                 _fix(layout))
    data = _key(batch, "data", path, layout)
    labels_raw = _key(batch, layout.label_key, path, layout)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == _PIXELS and data.shape[0] > 0):
        raise corrupt_file_error(
            path, f"'data' is not a (N, {_PIXELS}) uint8 array", _fix(layout)
        )
    labels = _flat_labels(labels_raw, data.shape[0], path, layout)
    _check_labels(path, labels, layout)
    return _to_hwc(data), labels


def _flat_labels(raw: Any, count: int, path: Path, layout: CifarLayout) -> np.ndarray:
    """The labels entry as (count,) int64: a flat list of ints (or a 1-D integer array).

    The length and element types are checked before any conversion, so a list nesting the
    same list many times (tiny in the file, huge once expanded) is refused, not expanded.
    """
    if isinstance(raw, np.ndarray):
        if raw.shape != (count,) or raw.dtype.kind not in "iu":
            raise corrupt_file_error(path, f"{count} images but labels of shape {raw.shape} "
                                     f"and type {raw.dtype}", _fix(layout))
        return raw.astype(np.int64)
    if not isinstance(raw, (list, tuple)) or len(raw) != count:
        shape = f"a {type(raw).__name__}" + (f" of {len(raw)}" if hasattr(raw, "__len__") else "")
        raise corrupt_file_error(path, f"{count} images but labels are {shape}", _fix(layout))
    if not all(isinstance(v, (int, np.integer)) for v in raw):
        raise corrupt_file_error(path, "labels are not a flat list of integers", _fix(layout))
    try:
        return np.asarray(raw, dtype=np.int64)
    except OverflowError as error:
        raise corrupt_file_error(path, f"labels are not small integers ({error})",
                                 _fix(layout)) from error


def _read_binary_batch(path: Path, layout: CifarLayout) -> tuple[np.ndarray, np.ndarray]:
    record = layout.label_bytes + _PIXELS
    raw = read_bytes(path, _MAX_FILE, _fix(layout))
    if not raw or len(raw) % record:
        raise corrupt_file_error(
            path, f"size {len(raw)} bytes is not a positive multiple of the {record}-byte "
            "record (truncated?)", _fix(layout),
        )
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(-1, record)
    labels = rows[:, layout.label_bytes - 1].astype(np.int64)
    _check_labels(path, labels, layout)
    if layout.label_bytes == 2 and rows[:, 0].max() >= _COARSE_CLASSES:
        raise corrupt_file_error(
            path, f"coarse labels outside 0..{_COARSE_CLASSES - 1} (is the record layout "
            "<coarse><fine><3072 pixels>?)", _fix(layout))
    return _to_hwc(rows[:, layout.label_bytes:]), labels


def _read_class_names(path: Path, layout: CifarLayout) -> list[str]:
    if layout.binary:
        try:
            text = read_bytes(path, 1 << 20, _fix(layout)).decode("utf-8")
        except UnicodeDecodeError as error:
            raise corrupt_file_error(path, "not a text file", _fix(layout)) from error
        names = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        meta = load_pickle(path, read_bytes(path, 1 << 20, _fix(layout)))
        if not isinstance(meta, dict):
            raise corrupt_file_error(path, "not a dict", _fix(layout))
        raw = _key(meta, layout.names_key, path, layout)
        if not isinstance(raw, list):
            raise corrupt_file_error(path, f"'{layout.names_key}' is not a list", _fix(layout))
        # checked before decoding: the list may repeat one long string many times
        if len(raw) != layout.num_classes or not all(
                isinstance(n, (bytes, str)) and len(n) <= _MAX_NAME for n in raw):
            raise corrupt_file_error(
                path, f"'{layout.names_key}' is not {layout.num_classes} class names of at "
                f"most {_MAX_NAME} characters", _fix(layout))
        names = [n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in raw]
    if len(names) != layout.num_classes:
        raise corrupt_file_error(
            path, f"{len(names)} class names instead of {layout.num_classes}", _fix(layout)
        )
    return names


def load_cifar(dataset: str, split: str, data_dir: str | Path | None) -> ImageArrays:
    """Load one split of ``dataset`` ("cifar10" or "cifar100", fine labels) into memory.

    Args:
        dataset: "cifar10" or "cifar100".
        split: "train" (50,000 images in the official files) or "test" (10,000).
        data_dir: the extraction directory or its parent; default :func:`default_data_dir`.

    Raises:
        DatasetError: files missing, incomplete, truncated or corrupted.
        UnsafePickleError: a python-version file asks to run code.
    """
    layout, directory = find_layout(dataset, split, None if data_dir is None else Path(data_dir))
    reader = _read_binary_batch if layout.binary else _read_python_batch
    parts = [reader(directory / name, layout) for name in layout.split_files(split)]
    classes = _read_class_names(directory / layout.meta_file, layout)
    return ImageArrays(
        images=np.concatenate([images for images, _ in parts]),
        labels=np.concatenate([labels for _, labels in parts]),
        classes=classes, name=dataset,
    )
