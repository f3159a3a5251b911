"""Reading dataset files defensively: where data lives, bounded reads, the errors for bad files.

Every reader in this package goes through :func:`read_bytes` so that a truncated, corrupted
or hostile file becomes a :class:`~attnconv.errors.DatasetError` naming the file, never a
raw ``zlib``/``gzip``/``EOFError`` traceback and never an unbounded read.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from attnconv.errors import DatasetError

#: Environment variable naming the directory the datasets live in when no ``data_dir`` is given.
DATA_DIR_ENV = "ATTNCONV_DATA_DIR"

_CHUNK = 1 << 20


def default_data_dir() -> Path:
    """``$ATTNCONV_DATA_DIR`` if set, else ``./data`` (relative to the working directory)."""
    return Path(os.environ.get(DATA_DIR_ENV) or "data")


def corrupt_file_error(path: Path, problem: str, fix: str) -> DatasetError:
    """The DatasetError for a file that exists but cannot be what it claims to be."""
    return DatasetError(f"{path} is corrupted or not the expected format: {problem}. {fix}")


def missing_files_error(
    dataset: str, looked_in: Sequence[Path], expected: Sequence[str], source: str, fix: str
) -> DatasetError:
    """The DatasetError for a dataset that is absent or only partly on disk."""
    places = ", ".join(str(p) for p in looked_in)
    return DatasetError(
        f"{dataset} not found: looked in {places} for the files {', '.join(expected)}. "
        f"{dataset} comes from {source} (attnconv never downloads). {fix}"
    )


def read_bytes(path: Path, limit: int, fix: str) -> bytes:
    """Read at most ``limit`` bytes of ``path``, transparently gunzipping a ``.gz`` file.

    Reads in chunks, so a header that claims a huge size cannot make this allocate more
    than the file really holds (or ``limit``). Gzip damage (bad magic, CRC, truncation)
    becomes a DatasetError naming ``path`` with the given ``fix``.
    """
    chunks: list[bytes] = []
    total = 0
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as handle:
            while total < limit:
                chunk = handle.read(min(_CHUNK, limit - total))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise corrupt_file_error(path, f"gzip stream is damaged ({error})", fix) from error
    except OSError as error:
        raise DatasetError(f"cannot read {path}: {error}. {fix}") from error
    return b"".join(chunks)


def read_exact(path: Path, offset: int, size: int, fix: str, declared: str) -> np.ndarray:
    """The ``size`` bytes of ``path`` after its first ``offset`` (gunzipped if ``.gz``), as
    a writable uint8 array; the file must hold exactly ``offset + size`` bytes.

    Memory is bounded by ``size``, which the caller has checked against a sane limit: a plain
    file whose on-disk size is wrong is refused before anything is read, and a gzip stream is
    decompressed straight into the array and at most one byte beyond it (to detect trailing
    data), however much more it would expand to. ``declared`` names where ``size`` comes
    from in the error (e.g. "its header (60000, 28, 28)").

    Raises:
        DatasetError: truncated or longer than declared, damaged gzip stream, unreadable.
    """

    def wrong(found: int) -> DatasetError:
        problem = f"truncated: found {found} of" if found < size else "trailing bytes after"
        return corrupt_file_error(
            path, f"{problem} the {size} data bytes {declared} announces", fix)

    gz = path.suffix == ".gz"
    try:
        if not gz and (on_disk := path.stat().st_size - offset) != size:
            raise wrong(on_disk)
        out = np.empty(size, dtype=np.uint8)
        view = memoryview(out)
        total = 0
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as handle:
            if not gz:
                handle.seek(offset)
            elif len(handle.read(offset)) != offset:
                raise wrong(0)
            while total < size:
                count = handle.readinto(view[total:total + _CHUNK])
                if not count:
                    raise wrong(total)
                total += count
            if handle.read(1):
                raise wrong(size + 1)
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise corrupt_file_error(path, f"gzip stream is damaged ({error})", fix) from error
    except MemoryError as error:
        raise DatasetError(f"not enough memory to read the {size} data bytes {declared} "
                           f"announces in {path}. {fix}") from error
    except DatasetError:
        raise
    except OSError as error:
        raise DatasetError(f"cannot read {path}: {error}. {fix}") from error
    return out
