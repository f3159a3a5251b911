"""A restricted unpickler for the CIFAR "python version" files.

Those files are Python-2 pickles of plain dicts holding lists, byte strings and one numpy
array. Dicts, lists, tuples, strings and numbers are pickle opcodes, not globals, so the only
globals such a file names are numpy's array and dtype reconstruction. Copies re-pickled by
Python 3 with protocol 2 also name ``_codecs.encode`` (how protocol 2 spells a ``bytes``
object), admitted as a latin-1-only stand-in, and may hold numpy scalars.

:class:`RestrictedUnpickler` resolves exactly those and refuses every other global *before*
anything is called, so a crafted file that reduces to ``os.system``, ``builtins.eval`` or
``subprocess.Popen`` raises :class:`~attnconv.errors.UnsafePickleError` and executes nothing.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from attnconv.errors import DatasetError, UnsafePickleError

# The installed numpy's own reconstruction callables, taken from what it pickles itself, so
# that both numpy 1 (``numpy.core``) and numpy 2 (``numpy._core``) spellings in a file map to
# the real function without importing the deprecated ``numpy.core`` alias.
_RECONSTRUCT = np.ndarray((0,), np.uint8).__reduce__()[0]
_SCALAR = np.uint8(0).__reduce__()[0]


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """Stand-in for ``_codecs.encode`` that only rebuilds bytes (Python 3, protocol <= 2)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"unexpected _codecs.encode({type(text).__name__}, ...)")
    return text.encode("latin1")


#: (module, name) pairs a CIFAR pickle may name, and the object each resolves to.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.multiarray", "scalar"): _SCALAR,
    ("numpy._core.multiarray", "scalar"): _SCALAR,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose :meth:`find_class` admits only :data:`ALLOWED_GLOBALS`.

    Args:
        file: binary stream holding the pickle.
        source: the file's path, named in errors.
    """

    def __init__(self, file: io.BufferedIOBase, source: Path) -> None:
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        """Resolve an allowed global; refuse anything else with UnsafePickleError."""
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refused to load {self.source}: it asks for the global {module}.{name}, "
                "which a CIFAR data file never contains (only numpy arrays, lists and dicts). "
                "The file may have been tampered with; delete it and extract the official "
                "archive again."
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        """CIFAR files hold no persistent ids; refuse them."""
        raise UnsafePickleError(f"refused to load {self.source}: it uses persistent ids")


def load_pickle(path: Path, data: bytes) -> Any:
    """Unpickle ``data`` (the bytes of ``path``) with :class:`RestrictedUnpickler`.

    Raises:
        UnsafePickleError: the pickle names a global outside the allow-list.
        DatasetError: the bytes are not a complete, valid pickle (truncated, corrupted).
    """
    try:
        return RestrictedUnpickler(io.BytesIO(data), path).load()
    except DatasetError:
        raise
    except Exception as error:  # any parse failure of untrusted bytes is a corrupt file
        raise DatasetError(
            f"{path} is corrupted or not a CIFAR python-version file: unpickling failed "
            f"({type(error).__name__}: {error}). Delete it and extract the official archive "
            "again."
        ) from error
