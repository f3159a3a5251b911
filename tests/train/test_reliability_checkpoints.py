"""Nothing lost, in process: what a checkpoint holds, keep_last, fallback past corrupted files,
NaN/inf, a full disk, changed data, and exact resume under bf16/fp16 autocast.

Runs are stopped here by a real SIGTERM raised inside this process (the subprocess tests are in
test_reliability_kill.py).
"""

from __future__ import annotations

import errno
import os
import re
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from test_reliability_helpers import (
    STEPS,
    assert_no_partial_files,
    assert_same_final_state,
    quiet,
    reference_run,
    small,
)

from attnconv.errors import CheckpointError
from attnconv.train import TrainingDiverged, TrainingInterrupted, load_checkpoint, train
from attnconv.train import engine as engine_module
from attnconv.train import trainer as trainer_module
from attnconv.train.config import config_from_dict
from attnconv.train.resume import prune_step_checkpoints


def train_until(monkeypatch: pytest.MonkeyPatch, at_step: int, **train_args: Any) -> None:
    """``train(**train_args)`` stopped by a real SIGTERM (raised in this process) right after the
    checkpoint of global step ``at_step`` is written."""
    real_prune = trainer_module.prune_step_checkpoints
    sent: list[int] = []

    def prune_then_signal(ckpt_dir: Path, keep_last: int) -> list[Path]:
        deleted = real_prune(ckpt_dir, keep_last)
        if not sent and (ckpt_dir / f"step-{at_step:08d}.safetensors").exists():
            sent.append(signal.SIGTERM)
            signal.raise_signal(signal.SIGTERM)
        return deleted

    with monkeypatch.context() as patch:
        patch.setattr(trainer_module, "prune_step_checkpoints", prune_then_signal)
        with pytest.raises(TrainingInterrupted, match="--resume") as info:
            train(log=quiet, **train_args)
    assert info.value.exit_code == 128 + signal.SIGTERM


def interrupted_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str = "run",
                    at_step: int = 6, **changes: Any) -> Path:
    """A SMALL run (with ``changes``) stopped by SIGTERM after step ``at_step``."""
    train_until(monkeypatch, at_step, cfg=config_from_dict(small(tmp_path, name, **changes)))
    return tmp_path / name


def test_a_checkpoint_holds_the_whole_training_state() -> None:
    """Weights, optimiser, scheduler, epoch/step, data position and every RNG state."""
    run = reference_run()
    ckpt = load_checkpoint(run / "checkpoints" / f"step-{STEPS:08d}.safetensors")
    names = set(ckpt.tensors)
    assert {n for n in names if n.startswith("model.")}
    assert {n for n in names if n.startswith("optim.") and n.endswith("momentum_buffer")}
    assert "rng.torch" in names
    meta = ckpt.meta
    assert meta["scheduler"]["last_epoch"] == STEPS
    assert meta["optimizer"]["param_groups"][0]["momentum"] == 0.9
    assert set(meta["rng"]) == {"python", "numpy"}
    progress = meta["progress"]
    assert (progress["epoch"], progress["step_in_epoch"], progress["global_step"]) == (1, 8, 16)
    assert meta["data"]["position"] == 8 * 20 and meta["data"]["n_train"] == 160
    assert len(meta["data"]["train_sha256"]) == 64


def test_keep_last_prunes_step_checkpoints_but_never_best_or_last(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    deleted: list[str] = []
    real_unlink = Path.unlink

    def spy(self: Path, missing_ok: bool = False) -> None:
        deleted.append(self.name)
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", spy)
    train(config_from_dict(small(tmp_path, "k", checkpoint_every_steps=1, keep_last=3)),
          log=quiet)
    monkeypatch.undo()
    ckpts = tmp_path / "k" / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step-*")) == [
        f"step-{s:08d}.safetensors" for s in (STEPS - 2, STEPS - 1, STEPS)]
    assert (ckpts / "best.safetensors").is_file() and (ckpts / "last.safetensors").is_file()
    assert "best.safetensors" not in deleted and "last.safetensors" not in deleted
    assert sum(name.startswith("step-") for name in deleted) == STEPS - 3

    # the pruning rule alone, with more files than any run would leave
    for name in ["best.safetensors", "last.safetensors", "step-00000099.safetensors",
                 *(f"step-{s:08d}.safetensors" for s in range(1, 6))]:
        (tmp_path / name).write_bytes(b"x")
    prune_step_checkpoints(tmp_path, 1)
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == [
        "best.safetensors", "last.safetensors", "step-00000099.safetensors"]


@pytest.mark.parametrize("damage", ["bit-flip", "step-counter-bit-flip", "truncated"])
def test_resume_falls_back_past_a_corrupted_newest_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str) -> None:
    """A flip in the tensor bytes or in the header's step counter (6 -> 7: the incident where
    --resume continued silently from the wrong place), or a truncation: the newest checkpoint
    is refused by name and the run resumes from the previous one, ending bit-identical."""
    run = interrupted_run(tmp_path, monkeypatch)
    newest = run / "checkpoints" / "step-00000006.safetensors"
    data = bytearray(newest.read_bytes())
    if damage == "bit-flip":
        data[-5] ^= 0x01
    elif damage == "step-counter-bit-flip":
        counter = b'\\"global_step\\": 6'
        assert data.count(counter) == 1
        data[data.index(counter) + len(counter) - 1] ^= 0x01  # '6' -> '7'
    else:
        del data[len(data) // 2:]
    newest.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=re.escape(str(newest))):
        load_checkpoint(newest)

    messages: list[str] = []
    train(resume=run, log=messages.append)
    warning = next(m for m in messages if m.startswith("warning:"))
    assert str(newest) in warning
    assert "resuming from the previous complete checkpoint" in warning
    assert "step-00000004.safetensors" in warning
    assert (run / "checkpoints" / "step-00000006.safetensors.corrupt").is_file()  # kept aside
    assert_same_final_state(reference_run(), run)
    assert_no_partial_files(run)


def _nan_loss_at(monkeypatch: pytest.MonkeyPatch, global_step: int) -> None:
    real_step = engine_module.train_step
    calls = {"n": 0}

    def step(*args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        loss, correct = real_step(*args, **kwargs)
        calls["n"] += 1
        return (torch.tensor(float("nan")) if calls["n"] == global_step else loss), correct

    monkeypatch.setattr(engine_module, "train_step", step)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _nan_loss_at(monkeypatch, 5)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at epoch 1, step 5 \(global "
                                               r"step 5\)") as info:
        train(config_from_dict(small(tmp_path, "nan")), log=quiet)
    good = tmp_path / "nan" / "checkpoints" / "step-00000004.safetensors"
    assert f"the last good checkpoint {good} is intact" in str(info.value)
    assert sorted(p.name for p in good.parent.iterdir()) == [
        "step-00000002.safetensors", "step-00000004.safetensors"]
    ckpt = load_checkpoint(good)
    assert ckpt.meta["progress"]["global_step"] == 4
    assert all(torch.isfinite(t).all() for t in ckpt.section("model").values())
    assert_no_partial_files(tmp_path / "nan")


def test_non_finite_weights_are_never_saved(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A step whose loss looks finite but leaves inf weights: the next checkpoint is refused."""
    real_step = engine_module.train_step
    calls = {"n": 0}

    def step(model: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        out = real_step(model, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 4:  # the checkpoint of step 4 follows
            with torch.no_grad():
                next(model.parameters()).fill_(float("inf"))
        return out

    monkeypatch.setattr(engine_module, "train_step", step)
    with pytest.raises(TrainingDiverged, match=r"weights became NaN or infinite .*global step 4"):
        train(config_from_dict(small(tmp_path, "inf")), log=quiet)
    ckpts = tmp_path / "inf" / "checkpoints"
    assert [p.name for p in ckpts.iterdir()] == ["step-00000002.safetensors"]
    assert_no_partial_files(tmp_path / "inf")


def test_lr_1e6_diverges_cleanly(tmp_path: Path) -> None:
    with pytest.raises(TrainingDiverged, match="lower lr"):
        train(config_from_dict(small(tmp_path, "big", lr=1e6, schedule="constant",
                                     checkpoint_every_steps=1)), log=quiet)
    for path in (tmp_path / "big" / "checkpoints").glob("*.safetensors"):
        weights = load_checkpoint(path).section("model").values()
        assert all(torch.isfinite(t).all() for t in weights), path
    assert_no_partial_files(tmp_path / "big")


def test_full_disk_during_a_checkpoint_write(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC while step 4 is written: a CheckpointError naming the file, step 2 intact, no
    temporary file; the resume (disk freed) ends bit-identical."""
    real_fsync = os.fsync

    def full_disk(fd: int) -> None:
        if ".step-00000004.safetensors." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc")
    run = tmp_path / "full"
    with monkeypatch.context() as patch:
        patch.setattr(os, "fsync", full_disk)
        with pytest.raises(CheckpointError, match="No space left on device") as info:
            train(config_from_dict(small(tmp_path, "full")), log=quiet)
    message = str(info.value)
    assert str(run / "checkpoints" / "step-00000004.safetensors") in message
    assert "free space" in message
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000002.safetensors"]
    assert_no_partial_files(run)
    train(resume=run, log=quiet)
    assert_same_final_state(reference_run(), run)


def test_resume_refuses_changed_training_data(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    run = interrupted_run(tmp_path, monkeypatch, at_step=2)
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("train_subset: 160", "train_subset: 140"))
    with pytest.raises(CheckpointError, match=r"training data .* changed"):
        train(resume=run, log=quiet, allow_config_change=True)  # else the edit is refused


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_exact_resume_under_autocast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     precision: str) -> None:
    """CPU autocast: stopped at step 4, resumed, stopped at step 8 -- the step-8 state is
    bit-identical to a run that went straight to step 8 (fp16 also restores the GradScaler)."""
    straight = interrupted_run(tmp_path, monkeypatch, "straight", 8, precision=precision)
    run = interrupted_run(tmp_path, monkeypatch, "resumed", 4, precision=precision)
    meta = load_checkpoint(run / "checkpoints" / "step-00000004.safetensors").meta
    assert ("scaler" in meta) == (precision == "fp16")
    if precision == "fp16":
        assert meta["scaler"]["scale"] > 0 and "_growth_tracker" in meta["scaler"]
    train_until(monkeypatch, 8, resume=run)
    a = load_checkpoint(straight / "checkpoints" / "step-00000008.safetensors")
    b = load_checkpoint(run / "checkpoints" / "step-00000008.safetensors")
    assert a.tensors.keys() == b.tensors.keys()
    for name, tensor in a.tensors.items():
        assert torch.equal(tensor, b.tensors[name]), name
    assert a.meta["progress"] == {**b.meta["progress"], "train_time_s":
                                  a.meta["progress"]["train_time_s"]}
    assert a.meta.get("scaler") == b.meta.get("scaler")
