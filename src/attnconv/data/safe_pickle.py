"""A restricted unpickler for the CIFAR "python version" files.

Those files are Python-2 pickles of plain dicts holding lists, byte strings and one numpy
array. Dicts, lists, tuples, strings and numbers are pickle opcodes, not globals, so the only
globals such a file names are numpy's array and dtype reconstruction. Copies re-pickled by
Python 3 with protocol 2 also name ``_codecs.encode`` (how protocol 2 spells a ``bytes``
object), admitted as a latin-1-only stand-in, and may hold numpy scalars.

:class:`RestrictedUnpickler` resolves exactly those and refuses every other global *before*
anything is called, so a crafted file that reduces to ``os.system``, ``builtins.eval`` or
``subprocess.Popen`` raises :class:`~attnconv.errors.UnsafePickleError` and executes nothing.

The numpy globals are not handed out as such either, because the real ones turn a few bytes
into arrays of any size (``numpy.ndarray(shape, dtype, buffer, 0, strides=0)`` repeats one
byte; ``_reconstruct`` allocates whatever shape it is given; a dtype's state can give it a
sub-array shape its item size does not cover). Each resolves to a checking stand-in:

* ``_reconstruct`` only makes the empty array numpy itself pickles, ``ndarray`` is only
  accepted as its type argument and cannot be called;
* ``dtype`` only makes plain boolean, integer or float types (no objects, records or
  sub-arrays) and its state may only set the byte order;
* an array's state (BUILD) is applied only to an array ``_reconstruct`` just made and only
  when its byte string holds exactly ``prod(shape) * itemsize`` bytes, so every array owns a
  contiguous buffer no larger than the file; BUILD on anything else is refused.

Memory is therefore linear in the file's size.
"""

from __future__ import annotations

import io
import math
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from attnconv.errors import DatasetError, UnsafePickleError

# The installed numpy's own reconstruction callables, taken from what it pickles itself, so
# that both numpy 1 (``numpy.core``) and numpy 2 (``numpy._core``) spellings in a file map to
# the real function without importing the deprecated ``numpy.core`` alias.
_RECONSTRUCT = np.ndarray((0,), np.uint8).__reduce__()[0]
_SCALAR = np.uint8(0).__reduce__()[0]

_DTYPE_KINDS = "biuf"  # bool, signed and unsigned integers, floats
_MAX_ITEMSIZE = 8
_MAX_NDIM = 8
_BYTE_ORDERS = ("<", ">", "|", "=", b"<", b">", b"|", b"=")


class _Refused(Exception):
    """Raised by the stand-ins; :func:`load_pickle` turns it into UnsafePickleError."""


class _NdarrayType:
    """What ``numpy.ndarray`` resolves to: accepted as ``_reconstruct``'s type, never called."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise _Refused(
            "it calls numpy.ndarray directly, which can alias a few bytes into an array of "
            "any size (numpy's own pickles never do this)"
        )


_NDARRAY = _NdarrayType()


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """Stand-in for ``_codecs.encode`` that only rebuilds bytes (Python 3, protocol <= 2)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"unexpected _codecs.encode({type(text).__name__}, ...)")
    return text.encode("latin1")


def _check_dtype(dtype: Any) -> np.dtype:
    """``dtype`` if it is a plain bool/int/float numpy dtype of at most 8 bytes, else refuse."""
    if not (isinstance(dtype, np.dtype) and dtype.kind in _DTYPE_KINDS
            and dtype.subdtype is None and dtype.names is None
            and 0 < dtype.itemsize <= _MAX_ITEMSIZE):
        raise _Refused(f"it holds the numpy type {dtype!r}; a CIFAR file holds only plain "
                       "integer or float arrays")
    return dtype


def _make_dtype(spec: Any, align: Any = False, copy: Any = True) -> np.dtype:
    """Stand-in for ``numpy.dtype(spec, align, copy)`` limited to plain number types."""
    if isinstance(spec, bytes):
        spec = spec.decode("ascii", "replace")
    if not isinstance(spec, str) or len(spec) > 8:
        raise _Refused(f"it builds a numpy type from {type(spec).__name__} {spec!r:.40}")
    try:
        dtype = np.dtype(spec, bool(align), bool(copy))
    except (TypeError, ValueError) as error:
        raise pickle.UnpicklingError(f"bad numpy type {spec!r}: {error}") from error
    return _check_dtype(dtype)


def _dtype_state_ok(state: Any) -> bool:
    """A dtype state that only sets the byte order: ``(3, order, None, None, None, -1, -1, 0)``
    (version 4 adds ``metadata=None``)."""
    if not isinstance(state, tuple) or len(state) not in (8, 9):
        return False
    version, order, subarray, names, fields, elsize, alignment, flags, *rest = state
    return (version in (3, 4) and order in _BYTE_ORDERS
            and subarray is None and names is None and fields is None
            and elsize == -1 and alignment == -1 and flags == 0
            and all(extra is None for extra in rest))


def _array_state(state: Any) -> tuple[int, ...]:
    """Check an ndarray state ``(1, shape, dtype, is_fortran, rawdata)``; return the shape.

    The raw bytes must hold exactly ``prod(shape) * itemsize`` bytes (numpy checks the same,
    but only after a dtype's state may have lied about its item size, so both are checked).
    """
    if not isinstance(state, tuple) or len(state) != 5:
        raise _Refused("an array state is not (version, shape, dtype, fortran, bytes)")
    version, shape, dtype, fortran, raw = state
    if version != 1 or not isinstance(fortran, (bool, int)):
        raise _Refused(f"an array state has version {version!r}")
    if not (isinstance(shape, tuple) and len(shape) <= _MAX_NDIM
            and all(type(d) is int and d >= 0 for d in shape)):
        raise _Refused(f"an array has the shape {shape!r:.80}")
    _check_dtype(dtype)
    if not isinstance(raw, bytes):
        raise _Refused(f"an array's data is a {type(raw).__name__}, not bytes")
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise _Refused(f"an array of shape {shape} and type {dtype} needs {expected} bytes "
                       f"but its buffer holds {len(raw)}")
    return shape


#: (module, name) pairs a CIFAR pickle may name, and the stand-in each resolves to
#: (``_reconstruct`` and ``dtype`` are replaced per unpickler by methods that track what
#: they made, see :class:`RestrictedUnpickler`).
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): "_reconstruct",
    ("numpy._core.multiarray", "_reconstruct"): "_reconstruct",
    ("numpy.core.multiarray", "scalar"): "_scalar",
    ("numpy._core.multiarray", "scalar"): "_scalar",
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): "_dtype",
    ("_codecs", "encode"): _latin1_encode,
}


class RestrictedUnpickler(pickle._Unpickler):  # the pure-Python one: BUILD can be checked
    """An unpickler that admits only :data:`ALLOWED_GLOBALS` and checks every BUILD.

    Args:
        file: binary stream holding the pickle.
        source: the file's path, named in errors.
    """

    dispatch: ClassVar[dict[int, Callable[..., Any]]] = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: io.BufferedIOBase, source: Path) -> None:
        super().__init__(file, encoding="bytes")
        self.source = source
        self._fresh: dict[int, Any] = {}  # objects made here whose state is still unset

    def find_class(self, module: str, name: str) -> Any:
        """Resolve an allowed global; refuse anything else with UnsafePickleError."""
        try:
            found = ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refused to load {self.source}: it asks for the global {module}.{name}, "
                "which a CIFAR data file never contains (only numpy arrays, lists and dicts). "
                "The file may have been tampered with; delete it and extract the official "
                "archive again."
            ) from None
        return getattr(self, found) if isinstance(found, str) else found

    def persistent_load(self, pid: Any) -> Any:
        """CIFAR files hold no persistent ids; refuse them."""
        raise UnsafePickleError(f"refused to load {self.source}: it uses persistent ids")

    def _reconstruct(self, subtype: Any, shape: Any, typecode: Any) -> np.ndarray:
        """Stand-in for numpy's ``_reconstruct``: only the empty array numpy pickles."""
        if subtype is not _NDARRAY or shape != (0,) or typecode not in (b"b", "b"):
            raise _Refused(f"it reconstructs an array as _reconstruct({shape!r:.40}, "
                           f"{typecode!r:.20}); numpy only pickles ((0,), b'b')")
        array = _RECONSTRUCT(np.ndarray, (0,), b"b")
        self._fresh[id(array)] = array
        return array

    def _dtype(self, spec: Any, align: Any = False, copy: Any = True) -> np.dtype:
        dtype = _make_dtype(spec, align, copy)
        self._fresh[id(dtype)] = dtype
        return dtype

    def _scalar(self, dtype: Any, data: Any) -> Any:
        """Stand-in for numpy's ``scalar(dtype, bytes)``: one plain number."""
        _check_dtype(dtype)
        if not isinstance(data, bytes) or len(data) != dtype.itemsize:
            raise _Refused(f"a {dtype} scalar is built from {type(data).__name__} data of "
                           f"the wrong size")
        return _SCALAR(dtype, data)

    def load_build(self) -> None:
        """BUILD: set the state of an array or dtype made here just before, after checking it."""
        state = self.stack.pop()
        target = self.stack[-1]
        if self._fresh.pop(id(target), None) is not target:
            raise _Refused(f"it sets the state of a {type(target).__name__}, which a CIFAR "
                           "file never does")
        if isinstance(target, np.dtype):
            if not _dtype_state_ok(state):
                raise _Refused(f"a numpy type's state {state!r:.120} does more than set its "
                               "byte order")
        else:
            _array_state(state)
        target.__setstate__(state)

    dispatch[pickle.BUILD[0]] = load_build


def load_pickle(path: Path, data: bytes) -> Any:
    """Unpickle ``data`` (the bytes of ``path``) with :class:`RestrictedUnpickler`.

    Raises:
        UnsafePickleError: the pickle names a global outside the allow-list, or uses an
            allowed one in a way numpy's own pickles never do (e.g. an array whose buffer is
            not exactly its size).
        DatasetError: the bytes are not a complete, valid pickle (truncated, corrupted).
    """
    try:
        return RestrictedUnpickler(io.BytesIO(data), path).load()
    except DatasetError:
        raise
    except _Refused as refused:
        raise UnsafePickleError(
            f"refused to load {path}: {refused}. The file may have been tampered with; "
            "delete it and extract the official archive again."
        ) from None
    except Exception as error:  # any parse failure of untrusted bytes is a corrupt file
        raise DatasetError(
            f"{path} is corrupted or not a CIFAR python-version file: unpickling failed "
            f"({type(error).__name__}: {error}). Delete it and extract the official archive "
            "again."
        ) from error
