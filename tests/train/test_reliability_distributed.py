"""A dead or stuck torchrun worker: the job stops, the last checkpoint is resumable.

Rank 1 dies with ``os._exit(1)`` (or hangs) after 5 completed steps (the documented test hook
``ATTNCONV_TEST_CRASH_RANK`` / ``ATTNCONV_TEST_CRASH_STEP`` / ``ATTNCONV_TEST_CRASH_HOW``, see
attnconv/train/trainer.py); rank 0 must stop with one clear message instead of hanging, the
checkpoint of step 4 must be intact, and a single-process ``attnconv train --resume`` must
finish the run. A job still running after ``HANG_S`` fails the test (it does not just time
out): that is the hang these tests exist to catch.
"""

from __future__ import annotations

import datetime
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_reliability_helpers import ENV, assert_no_partial_files, overrides, small

from attnconv.cli import main
from attnconv.train import distributed, load_checkpoint
from attnconv.train.config import load_config
from attnconv.train.trainer import CRASH_HOW_ENV, CRASH_RANK_ENV, CRASH_STEP_ENV

HANG_S = 240  # a job still running after this hangs (the default dist_timeout_s is 300 s)


def run_ddp(config: dict[str, object], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``torchrun --nproc_per_node 2 -m attnconv train``; fails the test if it hangs."""
    try:
        return subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
             "2", "-m", "attnconv", "train", "--no-progress", *overrides(config)],
            env=env, capture_output=True, text=True, timeout=HANG_S)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"the job was still running after {HANG_S} s: a survivor waits forever "
                    f"for its dead or stuck peer\n{err.stderr}")


@pytest.mark.slow
def test_dead_worker_stops_the_job_and_the_run_resumes(tmp_path: Path, capsys) -> None:
    config = small(tmp_path, "ddp", dist_timeout_s=30)
    proc = run_ddp(config, {**ENV, CRASH_RANK_ENV: "1", CRASH_STEP_ENV: "5"})
    assert proc.returncode != 0
    ours = [line for line in proc.stderr.splitlines() if line.startswith("attnconv train:")]
    assert ours, proc.stderr
    run = tmp_path / "ddp"
    # rank 0 says what happened and how to continue (unless torchrun killed it first)
    assert any("a collective failed" in line or "interrupted by SIGTERM" in line
               for line in ours), ours
    assert all(f"attnconv train --resume {run}" in line for line in ours), ours

    ckpts = run / "checkpoints"
    newest = max(ckpts.glob("step-*.safetensors"))
    assert newest.name == "step-00000004.safetensors"
    assert load_checkpoint(newest).meta["progress"]["global_step"] == 4
    assert not (run / "results.json").exists()

    assert main(["train", "--resume", str(run), "--no-progress"]) == 0  # one process now
    assert "from step-00000004.safetensors" in capsys.readouterr().out
    last = load_checkpoint(ckpts / "last.safetensors")
    assert last.meta["progress"]["global_step"] == 16
    assert all(torch.isfinite(t).all() for t in last.section("model").values())
    assert (run / "results.json").is_file()
    assert_no_partial_files(run)


@pytest.mark.slow
def test_stuck_worker_fails_the_collective_after_dist_timeout_s(tmp_path: Path) -> None:
    """Rank 1 stops before step 5 without dying (no closed socket to notice): rank 0's next
    collective must fail by the configured timeout (5 s, far below HANG_S and the 300 s
    default), naming dist_timeout_s and the resume command."""
    config = small(tmp_path, "stuck", dist_timeout_s=5)
    proc = run_ddp(config, {**ENV, CRASH_RANK_ENV: "1", CRASH_STEP_ENV: "5",
                            CRASH_HOW_ENV: "hang"})
    assert proc.returncode != 0
    ours = [line for line in proc.stderr.splitlines() if line.startswith("attnconv train:")]
    assert len(ours) == 1, proc.stderr  # rank 0's; rank 1 is stuck until torchrun kills it
    assert "rank 0: a collective failed" in ours[0] and "dist_timeout_s=5 s" in ours[0], ours
    assert f"attnconv train --resume {tmp_path / 'stuck'}" in ours[0]
    newest = max((tmp_path / "stuck" / "checkpoints").glob("step-*.safetensors"))
    assert newest.name == "step-00000004.safetensors"


def test_collective_timeout_comes_from_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """dist_timeout_s bounds how long survivors wait in a collective for a stuck worker."""
    seen: dict[str, object] = {}

    def init(backend: str, timeout: datetime.timedelta) -> None:
        seen.update(backend=backend, timeout=timeout)

    monkeypatch.setattr(distributed.dist, "init_process_group", init)
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    for key, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(key, value)
    cfg = load_config(None, ["dist_timeout_s=7.5", "device=cpu"])
    info = distributed.setup(cfg.device, cfg.dist_timeout_s)
    assert info.rank == 1 and info.world_size == 2
    assert seen == {"backend": "gloo", "timeout": datetime.timedelta(seconds=7.5)}
    assert load_config(None, []).dist_timeout_s == 300


@pytest.mark.parametrize("finished", [True, False], ids=["finished", "failed"])
def test_teardown_order(monkeypatch: pytest.MonkeyPatch, finished: bool) -> None:
    """A run that finished meets its peers at a barrier, then collects garbage (the DDP
    reducer holding the group), then destroys the group; a failed run skips the barrier
    (a dead peer would make it wait for dist_timeout_s)."""
    calls: list[str] = []
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed.dist, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(distributed.gc, "collect", lambda: calls.append("collect") or 0)
    monkeypatch.setattr(distributed.dist, "destroy_process_group",
                        lambda: calls.append("destroy"))
    distributed.teardown(synchronize=finished)
    assert calls == (["barrier"] if finished else []) + ["collect", "destroy"]
