"""Atomic file writes: every output file appears whole or not at all.

A file is written to a temporary name in its own directory (``.NAME.<random>.tmp``), flushed,
fsynced and renamed over ``path`` (``os.replace``, atomic on POSIX and Windows), then the
directory is fsynced. If anything fails before the rename -- the serialiser raises, the disk is
full, the process is interrupted -- the temporary file is removed and ``path`` keeps its previous
content (or stays absent). A process killed outright can leave a ``.NAME.*.tmp`` behind, never a
half-written ``NAME``; :data:`TMP_GLOB` matches such leftovers.

* :func:`atomic_write_bytes`, :func:`atomic_write_text` -- a whole payload at once;
* :func:`atomic_open` -- a file object to stream into (``csv``, ``Figure.savefig``...), committed
  when the ``with`` block ends without an exception.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

TMP_GLOB = ".*.tmp"  # the names of the temporary files


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_directory(directory: Path) -> None:
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:  # a platform where directories cannot be opened (Windows): nothing to sync
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass  # some file systems refuse to fsync a directory; the rename itself is done
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", *, encoding: str | None = "utf-8",
                newline: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on a clean exit it replaces ``path`` atomically.

    Args:
        path: the final file; its parent directories are created.
        mode: ``"w"`` (text) or ``"wb"`` (binary).
        encoding, newline: as in :func:`open`, for text mode (ignored in binary mode).

    Raises:
        ValueError: ``mode`` is not ``"w"`` or ``"wb"``.

    On an exception inside the ``with`` block the temporary file is removed, ``path`` is left
    as it was, and the exception propagates.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        f: IO[Any] = (os.fdopen(fd, "wb") if mode == "wb"
                      else os.fdopen(fd, "w", encoding=encoding, newline=newline))
    except BaseException:
        os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; use the usual permissions
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see the module docstring)."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str, *, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically, encoded as ``encoding`` (UTF-8 by default).

    Newlines are written as given (no platform translation), like ``Path.write_bytes``.
    """
    atomic_write_bytes(path, text.encode(encoding))


def atomic_savefig(fig: Any, path: str | Path, **kwargs: Any) -> None:
    """``fig.savefig(path, **kwargs)`` written atomically; the format comes from the suffix.

    ``fig`` is a :class:`matplotlib.figure.Figure` (anything with its ``savefig``); an explicit
    ``format=`` keyword wins over the suffix.
    """
    path = Path(path)
    kwargs.setdefault("format", path.suffix.lstrip(".").lower() or None)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, **kwargs)
