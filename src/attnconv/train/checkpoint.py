"""Checkpoints: tensors in safetensors, everything else as JSON in its header; atomic writes.

One file holds a whole training state: ``model.*`` weights, ``optim.*`` optimiser tensors,
``rng.*`` random-number-generator states, and a JSON document (``attnconv`` metadata key) with
the configuration, progress counters, scheduler/optimiser hyper-parameters and a SHA-256 of the
tensor bytes. Nothing is unpickled on load. A file is written to a temporary name in the same
directory, flushed, fsynced and renamed, so a crash never leaves a half-written checkpoint under
a real name and never replaces a good one; the temporary files a killed write leaves behind
(``.NAME.*.tmp``) are found and removed by :func:`remove_stale_temporaries`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from attnconv.errors import CheckpointError

FORMAT = "attnconv-checkpoint/1"
META_KEY = "attnconv"
TMP_GLOB = ".*.tmp"  # what atomic_write_bytes names its temporary files
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header


@dataclass
class Checkpoint:
    """A loaded checkpoint: tensors by name and the JSON metadata."""

    path: Path
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]

    def section(self, prefix: str) -> dict[str, torch.Tensor]:
        """Tensors under ``prefix.`` with the prefix removed (e.g. ``"model"``)."""
        start = len(prefix) + 1
        return {k[start:]: v for k, v in self.tensors.items() if k.startswith(prefix + ".")}


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temporary file, fsync, rename, fsync directory.

    If anything fails (a full disk, an interrupt) the temporary file is removed and ``path``
    keeps its previous content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; use the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    """:func:`atomic_write_bytes` for text files (UTF-8)."""
    atomic_write_bytes(path, text.encode())


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Delete the temporary files killed writes left in ``directory``; return their paths.

    Only call this when no other process is writing into ``directory`` (e.g. on resume).
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = sorted(p for p in directory.glob(TMP_GLOB) if p.is_file())
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor],
                    meta: dict[str, Any]) -> None:
    """Save ``tensors`` and JSON-serialisable ``meta`` to ``path`` atomically.

    Raises :class:`CheckpointError` (an ``OSError``) naming the file when it cannot be written
    (a full disk, no permission); whatever ``path`` held before is then unchanged.
    """
    path = Path(path)
    flat = {k: v.detach().contiguous().cpu().clone() for k, v in tensors.items()}
    doc = {"format": FORMAT, "sha256": _digest(flat), **meta}
    try:
        header = json.dumps(doc)
    except TypeError as err:
        raise TypeError(f"checkpoint metadata is not JSON-serialisable: {err}") from err
    try:
        atomic_write_bytes(path, st_save(flat, metadata={META_KEY: header}))
    except OSError as err:
        raise CheckpointError(
            f"could not write the checkpoint {path}: {err.strerror or err}; free space (or fix "
            f"the permissions) in {path.parent}; the checkpoints already there are intact"
        ) from err


def _read_header_meta(data: bytes, path: Path) -> dict[str, Any]:
    if len(data) < 8:
        raise CheckpointError(f"{path} is truncated ({len(data)} bytes); it is not a complete "
                              f"checkpoint")
    n = int.from_bytes(data[:8], "little")
    if n <= 0 or 8 + n > len(data):
        raise CheckpointError(f"{path} is truncated or corrupted (bad header length)")
    try:
        header = json.loads(data[8:8 + n])
        return json.loads(header["__metadata__"][META_KEY])
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path} is not an attnconv checkpoint (no {META_KEY!r} "
                              f"metadata)") from err


def read_meta(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of a checkpoint, reading only its header (not the tensors).

    Raises :class:`CheckpointError` naming the file if the header is unreadable.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else 0
            data = head + f.read(n) if 0 < n <= _MAX_HEADER else head
    except OSError as err:
        raise CheckpointError(f"cannot read the checkpoint {path}: {err}") from err
    return _read_header_meta(data, path)


def load_checkpoint(path: str | Path, *, verify: bool = True) -> Checkpoint:
    """Load a checkpoint written by :func:`save_checkpoint` (no unpickling).

    Raises :class:`CheckpointError` naming the file if it is missing, truncated, corrupted or
    not an attnconv checkpoint; with ``verify`` the tensor bytes are checked against the stored
    SHA-256.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"cannot read the checkpoint {path}: {err}") from err
    meta = _read_header_meta(data, path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} has format {meta.get('format')!r}, expected {FORMAT!r}")
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path} is truncated or corrupted: {err}") from err
    if verify and _digest(tensors) != meta.get("sha256"):
        raise CheckpointError(f"{path} is corrupted: its tensors do not match the stored "
                              f"checksum")
    return Checkpoint(path, tensors, meta)
