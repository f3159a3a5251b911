"""Nothing lost: SIGKILL at chosen steps, SIGKILL inside checkpoint writes, SIGTERM and SIGINT.

Every kill happens at a point defined by the run's own progress (a step number, a temporary
file that exists), never after a wall-clock delay, so a faster or slower machine kills at the
same point.

Each test stops a real ``python -m attnconv train`` process, resumes it with
``attnconv train --resume RUN_DIR`` and requires the final weights, optimiser state, metrics and
test accuracy to be bit-identical to an uninterrupted run of the same configuration.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest
from test_reliability_helpers import (
    ENV,
    assert_no_partial_files,
    assert_same_final_state,
    finish,
    one_line,
    overrides,
    reference_run,
    small,
    start_train,
    wait_until,
)

from attnconv.cli import main
from attnconv.train import load_checkpoint
from attnconv.train.trainer import CRASH_HOW_ENV, CRASH_RANK_ENV, CRASH_STEP_ENV

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


@pytest.mark.parametrize(("kill_before", "resumes_from"), [
    (5, "step-00000004"),  # between two step checkpoints: steps 5 is lost and redone
    (8, "last"),  # at the epoch boundary, after the epoch-end files were written
    (13, "step-00000012"),  # in the middle of the last epoch
])
def test_sigkill_at_a_chosen_step_then_resume_is_bit_identical(tmp_path: Path, capsys,
                                                               kill_before: int,
                                                               resumes_from: str) -> None:
    """The run sends itself kill -9 just before the chosen global step (the trainer's test
    hook, so the moment does not depend on the machine's speed); the resumed run (in this
    process: nothing of the killed one survives but its files) ends bit-identical to an
    uninterrupted run."""
    run = tmp_path / "killed"
    env = {**ENV, CRASH_RANK_ENV: "0", CRASH_STEP_ENV: str(kill_before), CRASH_HOW_ENV: "sigkill"}
    code, _, err = finish(start_train(overrides(small(tmp_path, "killed")), env=env))
    assert code == -signal.SIGKILL, err
    assert not (run / "results.json").exists()
    newest = max(load_checkpoint(p).meta["progress"]["global_step"]
                 for p in (run / "checkpoints").glob("*.safetensors"))
    assert newest == kill_before - kill_before % 2  # checkpoint_every_steps=2: nothing newer

    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert f"from {resumes_from}.safetensors" in capsys.readouterr().out
    assert_same_final_state(reference_run(), run)
    assert_no_partial_files(run)


HOLD_WRITE = """
import os, sys, time
from attnconv.cli import main
_fsync, _seen = os.fsync, [0]
_name, _count = os.environ["HOLD_WRITE"].split(":")
def slow_fsync(fd):  # hold the count-th write of NAME open, between write and rename, for 60 s
    if f".{_name}." in os.readlink(f"/proc/self/fd/{fd}"):
        _seen[0] += 1
        if _seen[0] == int(_count):
            time.sleep(60)
    _fsync(fd)
os.fsync = slow_fsync
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
@pytest.mark.parametrize(("held", "resumes_from"), [
    ("step-00000006.safetensors:1", "step-00000004"),  # a step checkpoint
    ("best.safetensors:1", "step-00000008"),  # end of epoch 1: best before last
    ("last.safetensors:2", None),  # end of the last epoch, after best (if it improved)
], ids=["step-6", "best-epoch-1", "last-epoch-2"])
def test_sigkill_while_a_checkpoint_is_written_leaves_it_unused(tmp_path: Path, capsys,
                                                                held: str,
                                                                resumes_from: str | None) -> None:
    """kill -9 between writing a checkpoint's temporary file and renaming it (the test waits
    for that file to appear); the resume ignores and removes the temporary file, starts from
    the newest complete checkpoint and still ends bit-identical."""
    run = tmp_path / "mid-write"
    ckpts = run / "checkpoints"
    name = held.split(":")[0]
    proc = start_train(overrides(small(tmp_path, "mid-write")), wrapper=HOLD_WRITE,
                       env={**ENV, "HOLD_WRITE": held})
    count = int(held.split(":")[1])
    # the count-th temporary file of NAME: earlier ones were renamed, so wait for the real
    # file to have been written count - 1 times and a temporary to exist now
    wait_until(lambda: (count == 1 or (ckpts / name).exists())
               and any(ckpts.glob(f".{name}.*.tmp")), proc)
    proc.send_signal(signal.SIGKILL)
    assert finish(proc)[0] == -signal.SIGKILL
    assert list(ckpts.glob(".*.tmp")), "the kill should have left the temporary file"
    assert not (run / "results.json").exists()

    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "removed 1 unfinished temporary file" in out
    if resumes_from is not None:
        assert f"from {resumes_from}.safetensors" in out
    assert_same_final_state(reference_run(), run)
    assert_no_partial_files(run)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_saves_a_checkpoint_and_says_how_to_resume(tmp_path: Path, capsys,
                                                          signum: int) -> None:
    """SIGTERM/SIGINT: the step in progress finishes, a checkpoint is written, exit 128+signal,
    one line naming the resume command; the resumed run ends bit-identical. The run waits
    after step 2 until the signal arrives (test hook ``pause``, which says so on stdout), so
    the signal always lands during step 3."""
    run = tmp_path / "stopped"
    env = {**ENV, CRASH_RANK_ENV: "0", CRASH_STEP_ENV: "2", CRASH_HOW_ENV: "pause"}
    proc = start_train(overrides(small(tmp_path, "stopped")), env=env)
    assert proc.stdout is not None
    for line in proc.stdout:  # blocks until the hook pauses (or the process ends: fails below)
        if line.startswith("test hook: paused"):
            break
    proc.send_signal(signum)
    code, _, err = finish(proc)
    assert code == 128 + signum, err
    line = one_line(err)
    assert f"interrupted by {signal.Signals(signum).name} at epoch 1, step 3" in line
    assert f"attnconv train --resume {run}" in line
    saved = Path(line.split("checkpoint saved to ")[1].split(";")[0])
    assert saved == run / "checkpoints" / "step-00000003.safetensors"
    assert load_checkpoint(saved).meta["progress"]["global_step"] == 3
    assert not (run / "results.json").exists()

    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert f"from {saved.name}" in capsys.readouterr().out
    assert_same_final_state(reference_run(), run)
    assert_no_partial_files(run)
