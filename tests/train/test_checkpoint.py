"""Checkpoints: round trip, atomic writes, corruption detected, nothing unpickled."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from attnconv.errors import CheckpointError
from attnconv.train.checkpoint import atomic_write_bytes, load_checkpoint, save_checkpoint


def _tensors() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {"model.w": torch.randn(3, 4), "model.b": torch.arange(5),
            "rng.torch": torch.get_rng_state(), "half": torch.randn(2).bfloat16()}


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "ck.safetensors"
    save_checkpoint(path, _tensors(), {"progress": {"epoch": 3}, "classes": ["a", "b"]})
    ckpt = load_checkpoint(path)
    for name, value in _tensors().items():
        assert torch.equal(ckpt.tensors[name], value)
    assert ckpt.meta["progress"] == {"epoch": 3} and ckpt.meta["classes"] == ["a", "b"]
    assert set(ckpt.section("model")) == {"w", "b"}
    assert not list(tmp_path.glob("*.tmp"))


def test_truncated_and_corrupted_files_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "ck.safetensors"
    save_checkpoint(path, _tensors(), {})
    data = path.read_bytes()
    for cut in [0, 5, 100, len(data) - 1]:
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=str(path)):
            load_checkpoint(path)
    flipped = bytearray(data)
    flipped[-3] ^= 0xFF  # a bit flip inside the tensor bytes
    path.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="corrupted"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_a_failed_write_keeps_the_previous_file(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "ck.safetensors"
    save_checkpoint(path, _tensors(), {"progress": {"epoch": 1}})
    good = path.read_bytes()

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, _tensors(), {"progress": {"epoch": 2}})
    monkeypatch.undo()
    assert path.read_bytes() == good
    assert load_checkpoint(path).meta["progress"] == {"epoch": 1}
    assert not list(tmp_path.glob(".*.tmp"))


def test_atomic_write_sets_normal_permissions(tmp_path: Path) -> None:
    import os

    mask = os.umask(0)
    os.umask(mask)
    atomic_write_bytes(tmp_path / "x.bin", b"abc")
    assert (tmp_path / "x.bin").stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600
