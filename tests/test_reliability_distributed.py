"""A dead torchrun worker: the job stops in bounded time, the last checkpoint is resumable.

Rank 1 dies with ``os._exit(1)`` after 5 completed steps (the documented test hook
``ATTNCONV_TEST_CRASH_RANK`` / ``ATTNCONV_TEST_CRASH_STEP``, see attnconv/train/trainer.py);
rank 0 must stop with one clear message instead of hanging, the checkpoint of step 4 must be
intact, and a single-process ``attnconv train --resume`` must finish the run.
"""

from __future__ import annotations

import datetime
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from attnconv.cli import main
from attnconv.train import distributed, load_checkpoint
from attnconv.train.config import load_config
from attnconv.train.trainer import CRASH_RANK_ENV, CRASH_STEP_ENV
from test_reliability_helpers import ENV, assert_no_partial_files, overrides, small

BOUND_S = 120  # the whole job must be over within this


@pytest.mark.slow
def test_dead_worker_stops_the_job_and_the_run_resumes(tmp_path: Path, capsys) -> None:
    config = small(tmp_path, "ddp", dist_timeout_s=30)
    env = {**ENV, CRASH_RANK_ENV: "1", CRASH_STEP_ENV: "5"}
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "attnconv", "train", "--no-progress", *overrides(config)],
        env=env, capture_output=True, text=True, timeout=BOUND_S)
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    assert elapsed < BOUND_S
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
