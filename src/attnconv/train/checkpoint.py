"""Checkpoints: tensors in safetensors, everything else as JSON in its header; atomic writes.

One file holds a whole training state: ``model.*`` weights, ``optim.*`` optimiser tensors,
``rng.*`` random-number-generator states, and a JSON document (``attnconv`` metadata key) with
the configuration, progress counters, scheduler/optimiser hyper-parameters and normalisation.
A SHA-256 of the whole file (every byte but the 64 hex digits of the digest itself, which sit
in the ``attnconv.sha256`` metadata key and count as zeros while hashing) is checked before
anything is parsed, so a flipped bit anywhere -- header length, JSON header, tensor bytes --
raises :class:`CheckpointError`; then the metadata is validated (``checkpoint_meta``). Nothing
is unpickled on load. A file is written to a temporary name in the same
directory, flushed, fsynced and renamed, so a crash never leaves a half-written checkpoint under
a real name and never replaces a good one; the temporary files a killed write leaves behind
(``.NAME.*.tmp``) are found and removed by :func:`remove_stale_temporaries`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from attnconv.atomic import TMP_GLOB, atomic_write_bytes
from attnconv.errors import CheckpointError
from attnconv.train.checkpoint_meta import validate_meta

FORMAT = "attnconv-checkpoint/2"
LEGACY_FORMAT = "attnconv-checkpoint/1"  # SHA-256 of the tensors only; see load_checkpoint
META_KEY = "attnconv"
DIGEST_KEY = "attnconv.sha256"  # safetensors metadata key of the whole-file digest
_PLACEHOLDER = "0" * 64  # the digest field's content while the file is hashed
# The digest field as serialised in the header; a '"' inside a JSON string is always escaped,
# so this cannot match inside our JSON document or a tensor name.
_DIGEST_FIELD = re.compile(rb'"attnconv\.sha256":"([0-9a-f]{64})"')
_RESERVED = ("format", "sha256")  # set by save_checkpoint, never copied from the caller
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header


@dataclass
class Checkpoint:
    """A loaded checkpoint: tensors by name and the JSON metadata."""

    path: Path
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]
    legacy: bool = False  # format 1: only the tensors were checksummed

    def section(self, prefix: str) -> dict[str, torch.Tensor]:
        """Tensors under ``prefix.`` with the prefix removed (e.g. ``"model"``)."""
        start = len(prefix) + 1
        return {k[start:]: v for k, v in self.tensors.items() if k.startswith(prefix + ".")}


def _tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """The tensor-only checksum of format-1 files."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


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


def _seal(blob: bytes) -> bytes:
    """Write the SHA-256 of the whole file into its digest field (see :func:`_digest_span`)."""
    out = bytearray(blob)
    start, end = _digest_span(out, Path("<new checkpoint>"))
    out[start:end] = hashlib.sha256(out).hexdigest().encode()
    return bytes(out)


def _digest_span(data: bytes | bytearray, path: Path) -> tuple[int, int]:
    """Where the 64 hex digits of the whole-file digest lie in ``data``.

    Raises :class:`CheckpointError` when the header length is impossible or the header holds
    no (or more than one) digest field.
    """
    if len(data) < 8:
        raise CheckpointError(f"{path} is truncated ({len(data)} bytes); it is not a complete "
                              f"checkpoint")
    n = int.from_bytes(data[:8], "little")
    if n <= 0 or 8 + n > len(data) or n > _MAX_HEADER:
        raise CheckpointError(f"{path} is truncated or corrupted (bad header length)")
    spans = [m.span(1) for m in _DIGEST_FIELD.finditer(data, 8, 8 + n)]
    if len(spans) != 1:
        raise CheckpointError(f"{path} is corrupted or not an attnconv checkpoint (its header "
                              f"has no whole-file checksum {DIGEST_KEY!r})")
    return spans[0]


def _hash_with_placeholder(head: bytes, span: tuple[int, int], rest: Any = ()) -> str:
    """SHA-256 of the file with the digest field set to :data:`_PLACEHOLDER`.

    ``head`` holds the file's first bytes (at least up to the digest field), ``rest`` yields
    the remaining bytes in chunks.
    """
    view = memoryview(head)
    h = hashlib.sha256()
    h.update(view[:span[0]])
    h.update(_PLACEHOLDER.encode())
    h.update(view[span[1]:])
    for chunk in rest:
        h.update(chunk)
    return h.hexdigest()


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor],
                    meta: dict[str, Any]) -> None:
    """Save ``tensors`` and JSON-serialisable ``meta`` to ``path`` atomically.

    The file is sealed with a SHA-256 of every byte but the digest itself (header length,
    JSON header with all metadata, tensor bytes). ``meta`` is validated first
    (:func:`~attnconv.train.checkpoint_meta.validate_meta`), so every file written loads.

    Raises :class:`CheckpointError` (an ``OSError``) naming the file when it cannot be written
    (a full disk, no permission) or ``meta`` is invalid; whatever ``path`` held before is then
    unchanged.
    """
    path = Path(path)
    flat = {k: v.detach().contiguous().cpu().clone() for k, v in tensors.items()}
    doc = {**{k: v for k, v in meta.items() if k not in _RESERVED}, "format": FORMAT}
    try:
        header = json.dumps(doc, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise TypeError(f"checkpoint metadata is not JSON-serialisable: {err}") from err
    validate_meta(json.loads(header), path)
    _check_tensors(json.loads(header), flat, path)
    blob = _seal(st_save(flat, metadata={META_KEY: header, DIGEST_KEY: _PLACEHOLDER}))
    try:
        atomic_write_bytes(path, blob)
    except OSError as err:
        raise CheckpointError(
            f"could not write the checkpoint {path}: {err.strerror or err}; free space (or fix "
            f"the permissions) in {path.parent}; the checkpoints already there are intact"
        ) from err


def _parse_header(data: bytes, path: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """The safetensors ``__metadata__`` and our JSON document in it."""
    n = int.from_bytes(data[:8], "little")
    try:
        header = json.loads(data[8:8 + n])
        metadata = header["__metadata__"]
        doc = json.loads(metadata[META_KEY])
    except (ValueError, KeyError, TypeError, RecursionError) as err:
        raise CheckpointError(f"{path} is not an attnconv checkpoint (no {META_KEY!r} "
                              f"metadata)") from err
    if not isinstance(doc, dict):
        raise CheckpointError(f"{path} is not an attnconv checkpoint ({META_KEY!r} metadata "
                              f"is not a mapping)")
    return metadata, doc


def _legacy_or_fail(data: bytes, path: Path, error: CheckpointError,
                    allow_legacy: bool) -> dict[str, Any]:
    """The metadata of a format-1 file (header without checksum) if allowed, else an error."""
    if len(data) < 8 or not 0 < int.from_bytes(data[:8], "little") <= len(data) - 8:
        raise error
    try:
        metadata, doc = _parse_header(data, path)
    except CheckpointError:
        raise error from None
    if DIGEST_KEY in metadata or doc.get("format") != LEGACY_FORMAT:
        raise error
    if not allow_legacy:
        raise CheckpointError(
            f"{path} was written by an older attnconv ({LEGACY_FORMAT}): its header (config, "
            f"progress, RNG states, normalisation) has no checksum, so damage there would go "
            f"unnoticed; train again, or in Python load it with load_checkpoint(path, "
            f"allow_legacy=True), check it and save_checkpoint it again")
    return doc


def _check_meta(doc: dict[str, Any], path: Path, legacy: bool) -> None:
    expected = LEGACY_FORMAT if legacy else FORMAT
    if doc.get("format") != expected:
        raise CheckpointError(f"{path} has format {doc.get('format')!r}, expected {FORMAT!r}")
    validate_meta({k: v for k, v in doc.items() if k not in _RESERVED}, path)


def read_meta(path: str | Path, *, allow_legacy: bool = False) -> dict[str, Any]:
    """The JSON metadata of a checkpoint, verified against the whole-file checksum.

    Streams the file once (the tensors are hashed, not kept) and validates the metadata.
    Raises :class:`CheckpointError` naming the file if it is unreadable, damaged anywhere, or
    its metadata is invalid.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else 0
            head += f.read(n) if 0 < n <= _MAX_HEADER else b""
            try:
                span = _digest_span(head, path)
            except CheckpointError as err:
                doc = _legacy_or_fail(head, path, err, allow_legacy)
                _check_meta(doc, path, legacy=True)
                return doc
            actual = _hash_with_placeholder(head, span, iter(lambda: f.read(1 << 20), b""))
    except CheckpointError:
        raise
    except OSError as err:
        raise CheckpointError(f"cannot read the checkpoint {path}: {err}") from err
    if actual != head[span[0]:span[1]].decode():
        raise CheckpointError(f"{path} is truncated or corrupted: its bytes do not match "
                              f"the stored checksum")
    _, doc = _parse_header(head, path)
    _check_meta(doc, path, legacy=False)
    return doc


def _check_tensors(meta: dict[str, Any], tensors: dict[str, torch.Tensor], path: Path) -> None:
    """The tensors a resumable checkpoint needs are there (RNG state: a 1-D uint8 tensor)."""
    if "progress" not in meta:
        return
    rng = tensors.get("rng.torch")
    if rng is None or rng.dtype != torch.uint8 or rng.dim() != 1:
        raise CheckpointError(f"{path} lacks the tensor 'rng.torch' (uint8 torch RNG state) a "
                              f"resumable checkpoint needs; use another checkpoint")
    if not any(name.startswith("model.") for name in tensors):
        raise CheckpointError(f"{path} holds no model weights ('model.*' tensors); use "
                              f"another checkpoint")


def load_checkpoint(path: str | Path, *, verify: bool = True,
                    allow_legacy: bool = False) -> Checkpoint:
    """Load a checkpoint written by :func:`save_checkpoint` (no unpickling).

    Every byte is checked against the whole-file SHA-256 (unless ``verify`` is False) before
    anything is parsed, then the metadata is validated
    (:func:`~attnconv.train.checkpoint_meta.validate_meta`). Files of the older format 1,
    whose checksum covers the tensors only, are refused unless ``allow_legacy`` (then the
    tensors are still verified and ``Checkpoint.legacy`` is True).

    Raises :class:`CheckpointError` naming the file if it is missing, truncated, corrupted,
    not an attnconv checkpoint, or holds invalid metadata.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"cannot read the checkpoint {path}: {err}") from err
    return checkpoint_from_bytes(data, path, verify=verify, allow_legacy=allow_legacy)


def checkpoint_from_bytes(data: bytes, path: str | Path, *, verify: bool = True,
                          allow_legacy: bool = False) -> Checkpoint:
    """:func:`load_checkpoint` for the bytes of a file; ``path`` names it in errors."""
    path = Path(path)
    legacy = False
    try:
        span = _digest_span(data, path)
    except CheckpointError as err:
        doc = _legacy_or_fail(data, path, err, allow_legacy)
        legacy = True
    else:
        if verify and _hash_with_placeholder(data, span) != data[span[0]:span[1]].decode():
            raise CheckpointError(f"{path} is truncated or corrupted: its bytes do not match "
                                  f"the stored checksum")
        _, doc = _parse_header(data, path)
    _check_meta(doc, path, legacy)
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path} is truncated or corrupted: {err}") from err
    if legacy and verify and _tensor_digest(tensors) != doc.get("sha256"):
        raise CheckpointError(f"{path} is corrupted: its tensors do not match the stored "
                              f"checksum")
    _check_tensors(doc, tensors, path)
    return Checkpoint(path, tensors, doc, legacy)
