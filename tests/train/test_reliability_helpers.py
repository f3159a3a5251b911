"""Shared pieces of the reliability tests (docs/reliability.md); this module holds no tests.

A run small enough to train in a couple of seconds on the embedded data, helpers to start
``python -m attnconv train`` as a real process and to compare the final weights of two runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from attnconv.train import load_checkpoint, train
from attnconv.train.config import config_from_dict

#: 160 training images in batches of 20: 8 steps per epoch, 2 epochs, a checkpoint every
#: 2 steps; dropout on so that the per-step random state matters.
SMALL: dict[str, Any] = {
    "model": "sa-quadratic", "dataset": "embedded", "train_subset": 160, "val_fraction": 0.02,
    "batch_size": 20, "eval_batch_size": 1000, "epochs": 2, "lr": 0.05,
    "checkpoint_every_steps": 2, "keep_last": 2, "deterministic": True, "threads": 1,
    "model_args": {"hidden_size": 16, "num_layers": 1, "heads": 2, "ffn_size": 32,
                   "dropout": 0.1, "attn_dropout": 0.0},
}
STEPS = 16  # optimisation steps of a SMALL run
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def quiet(_message: str) -> None:
    """A ``log`` for :func:`attnconv.train.train` that prints nothing."""


def overrides(config: dict[str, Any]) -> list[str]:
    """``key=value`` command-line overrides for a config dictionary (values as JSON = YAML)."""
    return [f"{key}={json.dumps(value)}" for key, value in config.items()]


def small(tmp_path: Path, name: str, **changes: Any) -> dict[str, Any]:
    """The SMALL config writing to ``tmp_path / name``."""
    return {**SMALL, "out_dir": str(tmp_path), "name": name, **changes}


_REFERENCE: dict[str, Path] = {}


def reference_run(**changes: Any) -> Path:
    """Run directory of an uninterrupted SMALL run (with ``changes``), trained once per session."""
    key = json.dumps(changes, sort_keys=True)
    if key not in _REFERENCE:
        out = Path(tempfile.mkdtemp(prefix="attnconv-reference-"))
        train(config_from_dict(small(out, "reference", **changes)), log=quiet,
              progress_bar=False)
        _REFERENCE[key] = out / "reference"
    return _REFERENCE[key]


def start_train(args: list[str], *, wrapper: str | None = None,
                env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start ``python -m attnconv train --no-progress ARGS`` (or ``python -c WRAPPER ...``)."""
    head = ["-c", wrapper] if wrapper else ["-m", "attnconv"]
    return subprocess.Popen([sys.executable, *head, "train", "--no-progress", *args],
                            env=env or ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_until(condition: Callable[[], bool], proc: subprocess.Popen[str] | None = None,
               timeout: float = 120.0, poll: float = 0.01) -> None:
    """Poll ``condition`` until it holds; fail if ``proc`` exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the process exited ({proc.returncode}) before the condition "
                                 f"held:\n{out}\n{err}")
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the condition")
        time.sleep(poll)


def has_step_checkpoint(run_dir: Path) -> Callable[[], bool]:
    """A condition: the run has written a complete step checkpoint."""
    return lambda: any((run_dir / "checkpoints").glob("step-*.safetensors"))


def finish(proc: subprocess.Popen[str], timeout: float = 120.0) -> tuple[int, str, str]:
    """Wait for ``proc``; return ``(returncode, stdout, stderr)``."""
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def assert_same_final_state(expected_run: Path, run: Path) -> None:
    """Final weights, optimiser state and best checkpoint are bit-identical (torch.equal)."""
    for name in ("last.safetensors", "best.safetensors"):
        a = load_checkpoint(expected_run / "checkpoints" / name)
        b = load_checkpoint(run / "checkpoints" / name)
        assert a.meta["progress"]["global_step"] == b.meta["progress"]["global_step"], name
        for section in ("model", "optim"):
            ta, tb = a.section(section), b.section(section)
            assert ta.keys() == tb.keys(), (name, section)
            for key, tensor in ta.items():
                assert torch.equal(tensor, tb[key]), f"{name}: {section}.{key} differs"
    rows_a = (expected_run / "metrics.jsonl").read_text().splitlines()
    rows_b = (run / "metrics.jsonl").read_text().splitlines()
    assert len(rows_a) == len(rows_b)
    for ra, rb in zip(rows_a, rows_b, strict=True):
        ja, jb = json.loads(ra), json.loads(rb)
        for key in ("epoch", "step", "train_loss", "train_accuracy", "val_loss",
                    "val_accuracy", "lr"):
            assert ja[key] == jb[key], key
    test_a = json.loads((expected_run / "results.json").read_text())["test_accuracy"]
    assert json.loads((run / "results.json").read_text())["test_accuracy"] == test_a


def assert_no_partial_files(run_dir: Path) -> None:
    """No temporary file is left and every checkpoint loads (checksum verified)."""
    assert not list(run_dir.rglob("*.tmp")), list(run_dir.rglob("*.tmp"))
    for path in (run_dir / "checkpoints").glob("*.safetensors"):
        load_checkpoint(path)


def one_line(stderr: str) -> str:
    """The single line of ``stderr``; fails if there are more, or a traceback."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]
