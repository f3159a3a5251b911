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
