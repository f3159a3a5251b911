"""Nothing lost: SIGKILL at any moment, SIGKILL inside a checkpoint write, SIGTERM and SIGINT.

Each test stops a real ``python -m attnconv train`` process, resumes it with
``attnconv train --resume RUN_DIR`` and requires the final weights, optimiser state, metrics and
test accuracy to be bit-identical to an uninterrupted run of the same configuration.
"""

from __future__ import annotations

import random
import signal
import sys
import time
from pathlib import Path

import pytest

from attnconv.cli import main
from attnconv.train import load_checkpoint
from test_reliability_helpers import (
    assert_no_partial_files,
    assert_same_final_state,
    finish,
    has_step_checkpoint,
    one_line,
    overrides,
    reference_run,
    small,
    start_train,
    wait_until,
)

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def test_sigkill_at_a_random_moment_then_resume_is_bit_identical(tmp_path: Path) -> None:
    """kill -9 at a seeded random moment after the first checkpoint; resume in a new process."""
    run = tmp_path / "killed"
    proc = start_train(overrides(small(tmp_path, "killed")))
    wait_until(has_step_checkpoint(run), proc)
    delay = random.Random(20200426).uniform(0.0, 1.5)  # seeded: the same moment every time
    time.sleep(delay)
    assert proc.poll() is None, "the run ended before the kill; the test would prove nothing"
    proc.send_signal(signal.SIGKILL)
    code, _, _ = finish(proc)
    assert code == -signal.SIGKILL
    assert not (run / "results.json").exists()

    resumed = start_train(["--resume", str(run)])
    code, out, err = finish(resumed)
    assert code == 0, err
    assert "resuming" in out
    assert_same_final_state(reference_run(), run)
    assert_no_partial_files(run)


SLOW_FSYNC = """
import os, sys, time
from attnconv.cli import main
_fsync = os.fsync
def slow_fsync(fd):  # hold the write of step 6 open, between write and rename, for 60 s
    if ".step-00000006.safetensors." in os.readlink(f"/proc/self/fd/{fd}"):
        time.sleep(60)
    _fsync(fd)
os.fsync = slow_fsync
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_sigkill_while_a_checkpoint_is_written_leaves_it_unused(tmp_path: Path, capsys) -> None:
    """kill -9 between writing step-6's temporary file and renaming it; the resume ignores and
    removes the temporary file, starts from step 4 and still ends bit-identical."""
    run = tmp_path / "mid-write"
    ckpts = run / "checkpoints"
    proc = start_train(overrides(small(tmp_path, "mid-write")), wrapper=SLOW_FSYNC)
    wait_until(lambda: any(ckpts.glob(".step-00000006.safetensors.*.tmp")), proc)
    proc.send_signal(signal.SIGKILL)
    assert finish(proc)[0] == -signal.SIGKILL
    assert list(ckpts.glob(".*.tmp")), "the kill should have left the temporary file"
    assert not (ckpts / "step-00000006.safetensors").exists()

    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "removed 1 unfinished temporary file" in out
    assert "from step-00000004.safetensors" in out
    assert_same_final_state(reference_run(), run)
    assert_no_partial_files(run)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_saves_a_checkpoint_and_says_how_to_resume(tmp_path: Path, capsys,
                                                          signum: int) -> None:
    """SIGTERM/SIGINT: checkpoint, exit 128+signal, one line naming the resume command; the
    resumed run ends bit-identical."""
    run = tmp_path / "stopped"
    proc = start_train(overrides(small(tmp_path, "stopped")))
    wait_until(has_step_checkpoint(run), proc)
    proc.send_signal(signum)
    code, _, err = finish(proc)
    assert code == 128 + signum, err
    line = one_line(err)
    assert f"interrupted by {signal.Signals(signum).name}" in line
    assert f"attnconv train --resume {run}" in line
    saved = Path(line.split("checkpoint saved to ")[1].split(";")[0])
    assert saved.parent == run / "checkpoints"
    assert load_checkpoint(saved).meta["progress"]["global_step"] >= 2
    assert not (run / "results.json").exists()

    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert f"from {saved.name}" in capsys.readouterr().out
    assert_same_final_state(reference_run(), run)
    assert_no_partial_files(run)
