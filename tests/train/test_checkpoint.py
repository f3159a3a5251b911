"""Checkpoints: round trip, atomic writes, whole-file integrity (every bit), metadata schema and
cross-checks, format-1 files, nothing unpickled."""

from __future__ import annotations

import copy
import json
import math
import random
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save as st_save

from attnconv.cli import main
from attnconv.errors import CheckpointError
from attnconv.train.checkpoint import (
    _PLACEHOLDER,
    DIGEST_KEY,
    FORMAT,
    LEGACY_FORMAT,
    META_KEY,
    _seal,
    _tensor_digest,
    atomic_write_bytes,
    checkpoint_from_bytes,
    load_checkpoint,
    read_meta,
    save_checkpoint,
)
from attnconv.train.checkpoint_meta import progress_fields
from attnconv.train.model_io import load_model


def _tensors() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {"model.w": torch.randn(3, 4), "model.b": torch.arange(5),
            "rng.torch": torch.get_rng_state(), "half": torch.randn(2).bfloat16()}


def forge(path: Path, tensors: dict[str, torch.Tensor], doc: Any) -> Path:
    """A correctly sealed file with arbitrary metadata ``doc`` (what a buggy writer, or someone
    who edits the header and recomputes the checksum, would produce): only the schema and the
    cross-checks can catch it."""
    header = doc if isinstance(doc, str) else json.dumps(
        {**doc, "format": FORMAT} if isinstance(doc, dict) else doc)
    path.write_bytes(_seal(st_save(tensors, metadata={META_KEY: header,
                                                      DIGEST_KEY: _PLACEHOLDER})))
    return path


@pytest.fixture(scope="module")
def trained(quadratic_run: Path) -> Path:
    """A real resumable checkpoint (end of epoch 2 of a tiny sa-quadratic run)."""
    return quadratic_run / "checkpoints" / "last.safetensors"


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "ck.safetensors"
    save_checkpoint(path, _tensors(), {"classes": ["a", "b"], "note": {"any": [1, "x"]}})
    ckpt = load_checkpoint(path)
    for name, value in _tensors().items():
        assert torch.equal(ckpt.tensors[name], value)
    assert ckpt.meta == {"classes": ["a", "b"], "note": {"any": [1, "x"]}, "format": FORMAT}
    assert read_meta(path) == ckpt.meta and not ckpt.legacy
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


def test_every_single_bit_flip_anywhere_in_a_small_checkpoint_is_detected(
        tmp_path: Path) -> None:
    """All 8 x len(file) single-bit flips: header length, JSON header (the metadata, the digest
    itself, the padding) and tensor bytes each raise CheckpointError naming the file."""
    path = tmp_path / "small.safetensors"
    save_checkpoint(path, {"model.w": torch.randn(2, 3)},
                    {"model": "m", "mean": [0.5], "std": [0.25], "classes": ["a", "b"],
                     "num_classes": 2, "in_chans": 1, "image_size": [4, 4], "dataset": "d"})
    data = path.read_bytes()
    assert checkpoint_from_bytes(data, path).meta["mean"] == [0.5]  # the original loads
    missed = []
    for byte in range(len(data)):
        for bit in range(8):
            flipped = bytearray(data)
            flipped[byte] ^= 1 << bit
            try:
                checkpoint_from_bytes(bytes(flipped), path)
            except CheckpointError as err:
                assert str(path) in str(err)
            else:
                missed.append((byte, bit))
    assert missed == [] and len(data) > 300


def test_random_bit_flips_in_a_trained_checkpoint_are_detected(trained: Path,
                                                               tmp_path: Path) -> None:
    """3,000 seeded random single-bit flips over a real resumable checkpoint: every one raises
    CheckpointError; a tenth of them also through read_meta (which streams the file)."""
    data = trained.read_bytes()
    assert checkpoint_from_bytes(data, trained).meta["progress"]["global_step"] > 0
    n_header = 8 + int.from_bytes(data[:8], "little")
    rng = random.Random(0)
    # half in the header (config, progress, RNG states, normalisation), half anywhere
    positions = [rng.randrange(n_header) for _ in range(1500)]
    positions += [rng.randrange(len(data)) for _ in range(1500)]
    copy_path = tmp_path / "flipped.safetensors"
    for i, pos in enumerate(positions):
        flipped = bytearray(data)
        flipped[pos] ^= 1 << rng.randrange(8)
        with pytest.raises(CheckpointError, match=str(trained)):
            checkpoint_from_bytes(bytes(flipped), trained)
        if i % 10 == 0:
            copy_path.write_bytes(flipped)
            with pytest.raises(CheckpointError, match=str(copy_path)):
                read_meta(copy_path)


def test_eval_of_a_checkpoint_with_a_flipped_normalisation_bit_fails(
        trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The incident: a flip in ``mean`` used to change eval's accuracy with exit code 0."""
    data = bytearray(trained.read_bytes())
    at = data.index(b'\\"mean\\": [') + len(b'\\"mean\\": [') + 2  # a digit of mean[0]
    data[at] ^= 0x01
    bad = tmp_path / "flipped.safetensors"
    bad.write_bytes(bytes(data))
    assert main(["eval", str(bad)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("attnconv eval: error:")
    assert str(bad) in err[0] and "do not match the stored checksum" in err[0]


def test_a_failed_write_keeps_the_previous_file(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "ck.safetensors"
    save_checkpoint(path, _tensors(), {"note": 1})
    good = path.read_bytes()

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, _tensors(), {"note": 2})
    monkeypatch.undo()
    assert path.read_bytes() == good
    assert load_checkpoint(path).meta["note"] == 1
    assert not list(tmp_path.glob(".*.tmp"))


def test_atomic_write_sets_normal_permissions(tmp_path: Path) -> None:
    import os

    mask = os.umask(0)
    os.umask(mask)
    atomic_write_bytes(tmp_path / "x.bin", b"abc")
    assert (tmp_path / "x.bin").stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600


def _set(doc: dict[str, Any], key: str, value: Any) -> None:
    """Set (or with ``value is DELETE`` remove) the dotted ``key`` of ``doc``."""
    *parents, last = key.split(".")
    for part in parents:
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    if value is DELETE:
        del doc[last]
    elif isinstance(doc, list):
        doc[int(last)] = value
    else:
        doc[last] = value


DELETE = object()

#: (edit of a valid resumable checkpoint's metadata, text the error must contain)
SCHEMA_CASES = [
    ({"progress.global_step": "8"}, "progress.global_step: expected an integer"),
    ({"progress.step_in_epoch": DELETE}, "progress.step_in_epoch: missing"),
    ({"progress.seen": -1.0}, "progress.seen: -1.0 is not a finite number"),
    ({"progress.rewound": 3}, "progress.rewound: unknown field"),
    ({"progress.epoch": True}, "progress.epoch: expected an integer"),
    ({"num_classes": -3}, "num_classes: -3 is outside"),
    ({"num_classes": 10 ** 12}, "num_classes: 1000000000000 is outside"),
    ({"in_chans": "one"}, "in_chans: expected an integer"),
    ({"image_size": [28, 10 ** 9]}, "image_size[1]: 1000000000 is outside"),
    ({"image_size": [28]}, "image_size: expected 2 entries"),
    ({"std": [0.0]}, "std[0]: 0.0 is not a finite number"),
    ({"mean": [float("nan")]}, "mean[0]: nan is not a finite number"),
    ({"mean": "0.28"}, "mean: expected a list"),
    ({"model_args.hidden_size": 10 ** 7, "config.model_args.hidden_size": 10 ** 7},
     "model_args.hidden_size: 10000000 is outside"),
    ({"model": 7}, "model: expected a non-empty string"),
    ({"rng.python.1": [1, 2, 3]}, "rng.python[1]: expected 625 entries"),
    ({"rng.numpy.0": "PCG64"}, "rng.numpy[0]: expected 'MT19937'"),
    ({"rng": DELETE}, "rng: missing"),
    ({"optimizer": DELETE}, "optimizer: missing (needed after global step"),
    ({"optimizer.param_groups.0.lr": "fast"}, "optimizer.param_groups[0].lr: expected a number"),
    ({"optimizer.param_groups.0.params": [0, 0]}, "parameter 0 is in two groups"),
    ({"scheduler.last_epoch": None}, "scheduler.last_epoch: expected an integer"),
    ({"data.train_sha256": "abc"}, "data.train_sha256: expected 64 hex digits"),
    ({"data.n_train": 0}, "data.n_train: 0 is outside"),
    ({"config.lr": -1.0}, "config: lr must be positive"),
    ({"config": ["not", "a", "mapping"]}, "config: expected a mapping"),
    ({"scaler": {"scale": 0}}, "scaler.scale"),
]

#: (consistent-looking edit, fields the error must name)
CROSS_CASES = [
    ({"progress.global_step": 9}, ["progress.global_step=9", "progress.epoch",
                                   "progress.step_in_epoch"]),
    ({"progress.epoch": 1, "data.epoch": 1, "progress.best_epoch": 1},
     ["progress.global_step=8", "1 * 4 + 0 = 4"]),
    ({"data.position": 50}, ["data.position=50", "progress.step_in_epoch"]),
    ({"data.epoch": 1}, ["data.epoch=1", "progress.epoch=2"]),
    ({"progress.step_in_epoch": 5, "progress.global_step": 13, "data.position": 250,
      "progress.seen": 1.0}, ["progress.step_in_epoch=5 > 4 steps per epoch"]),
    ({"scheduler.last_epoch": 7}, ["scheduler.last_epoch=7", "progress.global_step=8"]),
    ({"optimizer.param_groups.0.lr": 0.5}, ["optimizer.param_groups[0].lr=0.5",
                                            "scheduler._last_lr[0]"]),
    ({"model_args.heads": 2}, ["model_args=", "config.model_args="]),
    ({"num_classes": 9}, ["num_classes=9", "classes lists 10"]),
    ({"mean": [0.1, 0.2], "std": [1.0, 1.0]}, ["in_chans=1", "mean has 2 entries"]),
    ({"progress.best_epoch": 3}, ["progress.best_epoch=3", "progress.epoch=2"]),
    ({"progress.best_epoch": -1}, ["progress.best_epoch=-1", "best_val_accuracy"]),
    ({"progress.seen": 10.0}, ["progress.seen=10.0", "progress.step_in_epoch=0"]),
    ({"config.epochs": 1}, ["progress.epoch=2", "config.epochs=1"]),
]


def _edited(trained: Path, edits: dict[str, Any]) -> tuple[dict[str, torch.Tensor],
                                                            dict[str, Any]]:
    ckpt = load_checkpoint(trained)
    doc = copy.deepcopy(ckpt.meta)
    for key, value in edits.items():
        _set(doc, key, value)
    return ckpt.tensors, doc


@pytest.mark.parametrize(("edits", "message"), SCHEMA_CASES,
                         ids=[next(iter(e)) for e, _ in SCHEMA_CASES])
def test_invalid_metadata_is_one_checkpoint_error_naming_the_key(
        trained: Path, tmp_path: Path, edits: dict[str, Any], message: str) -> None:
    tensors, doc = _edited(trained, edits)
    path = forge(tmp_path / "forged.safetensors", tensors, doc)
    for load in (load_checkpoint, read_meta, load_model):
        with pytest.raises(CheckpointError) as info:
            load(path)
        assert str(path) in str(info.value) and message in str(info.value), str(info.value)
        assert "\n" not in str(info.value)
    nan = any(isinstance(v, float) and math.isnan(v) for v in doc.get("mean", []))
    # the writer refuses it too (NaN is not even JSON: a TypeError before validation)
    with pytest.raises(TypeError if nan else CheckpointError,
                       match="not JSON-serialisable" if nan else re.escape(message)):
        save_checkpoint(tmp_path / "written.safetensors", tensors, doc)
    assert not (tmp_path / "written.safetensors").exists()


@pytest.mark.parametrize(("edits", "fields"), CROSS_CASES,
                         ids=["+".join(e) for e, _ in CROSS_CASES])
def test_inconsistent_redundant_fields_are_refused(trained: Path, tmp_path: Path,
                                                   edits: dict[str, Any],
                                                   fields: list[str]) -> None:
    """Well-typed values that disagree with each other: CheckpointError naming the fields."""
    meta = load_checkpoint(trained).meta
    assert (meta["progress"]["epoch"], meta["progress"]["global_step"]) == (2, 8)  # 4 per epoch
    tensors, doc = _edited(trained, edits)
    path = forge(tmp_path / "forged.safetensors", tensors, doc)
    for load in (load_checkpoint, read_meta):
        with pytest.raises(CheckpointError, match="inconsistent metadata") as info:
            load(path)
        for field in fields:
            assert field in str(info.value), str(info.value)
    with pytest.raises(CheckpointError, match="inconsistent metadata"):
        save_checkpoint(tmp_path / "written.safetensors", tensors, doc)


def test_sizes_that_do_not_fit_the_stored_weights_fail_before_the_model_is_built(
        trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Valid-looking model_args whose model differs from the stored weights: refused after a
    build on the ``meta`` device, before any real parameter is allocated."""
    built: list[str] = []
    import attnconv.train.model_io as model_io

    real_create = model_io.create_model

    def spy(*args: Any, **kwargs: Any) -> torch.nn.Module:
        model = real_create(*args, **kwargs)
        built.append(next(model.parameters()).device.type)
        return model

    monkeypatch.setattr(model_io, "create_model", spy)
    tensors, doc = _edited(trained, {"model_args.hidden_size": 32,
                                     "config.model_args.hidden_size": 32})
    path = forge(tmp_path / "wide.safetensors", tensors, doc)
    with pytest.raises(CheckpointError, match=r"do not fit its model .*in the file"):
        load_model(path)
    assert built == ["meta"]
    tensors, doc = _edited(trained, {"model": "sa-quadratik", "config.model": "sa-quadratik"})
    with pytest.raises(CheckpointError, match=r"no model can have.*did you mean"):
        load_model(forge(tmp_path / "name.safetensors", tensors, doc))
    built.clear()
    model, _ = load_model(trained)
    assert built == ["meta", "cpu"] and not model.training


def test_cli_eval_and_resume_print_one_line_for_bad_metadata(
        trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tensors, doc = _edited(trained, {"progress.global_step": 9})
    bad = forge(tmp_path / "bad.safetensors", tensors, doc)
    assert main(["eval", str(bad)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("attnconv eval: error:")
    assert str(bad) in err[0] and "progress.global_step=9" in err[0]

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text((trained.parent.parent / "config.yaml").read_text())
    forge(run / "checkpoints" / "last.safetensors", tensors, doc)
    assert main(["train", "--resume", str(run)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("attnconv train: error:")
    assert "last.safetensors" in err[0] and "progress.global_step=9" in err[0]
    assert sorted(p.name for p in run.rglob("*")) == ["checkpoints", "config.yaml",
                                                      "last.safetensors"]  # nothing written


def test_format_1_files_are_refused_unless_allowed_then_can_be_rewritten(
        trained: Path, tmp_path: Path) -> None:
    """A file of the previous format (checksum over the tensors only) is refused with the fix;
    ``allow_legacy=True`` loads it flagged (tensors still verified) and saving it upgrades it."""
    ckpt = load_checkpoint(trained)
    doc = {**ckpt.meta, "format": LEGACY_FORMAT, "sha256": _tensor_digest(ckpt.tensors)}
    old = tmp_path / "old.safetensors"
    old.write_bytes(st_save(ckpt.tensors, metadata={META_KEY: json.dumps(doc)}))
    for load in (load_checkpoint, read_meta):
        with pytest.raises(CheckpointError, match=r"older attnconv .*allow_legacy=True"):
            load(old)
    legacy = load_checkpoint(old, allow_legacy=True)
    assert legacy.legacy and legacy.meta["progress"] == ckpt.meta["progress"]
    assert read_meta(old, allow_legacy=True)["format"] == LEGACY_FORMAT
    data = bytearray(old.read_bytes())
    data[-2] ^= 0x10  # the tensor checksum of format 1 still holds
    with pytest.raises(CheckpointError, match="tensors do not match"):
        checkpoint_from_bytes(bytes(data), old, allow_legacy=True)
    new = tmp_path / "new.safetensors"
    save_checkpoint(new, legacy.tensors, legacy.meta)
    upgraded = load_checkpoint(new)
    assert not upgraded.legacy and upgraded.meta == ckpt.meta
    # a format-2 file whose digest field was damaged is never mistaken for format 1
    data = bytearray(trained.read_bytes())
    at = data.index(DIGEST_KEY.encode())
    data[at] ^= 0x01
    with pytest.raises(CheckpointError, match="no whole-file checksum"):
        checkpoint_from_bytes(bytes(data), trained, allow_legacy=True)


def test_deeply_nested_metadata_is_refused(tmp_path: Path) -> None:
    """Nesting beyond the recursion limit (of the JSON parser or of the validator) is a
    CheckpointError, not a RecursionError."""
    nested = "[" * 5000 + "]" * 5000
    doc = f'{{"model_args": {{"x": {nested}}}, "format": "{FORMAT}"}}'
    path = forge(tmp_path / "deep.safetensors", _tensors(), doc)
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        load_checkpoint(path)


def test_progress_schema_follows_the_trainer() -> None:
    from attnconv.train.progress import Progress

    fields = progress_fields()
    assert set(fields) == set(Progress.__dataclass_fields__)
    assert set(fields.values()) <= {"int", "float"}
