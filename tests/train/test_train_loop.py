"""The training loop's per-step synchronisation: one agreement between ranks per step."""

from __future__ import annotations

from pathlib import Path

import pytest

from attnconv.train import engine, train
from attnconv.train.config import config_from_dict
from attnconv.train.distributed import DistInfo

TINY = {"model": "sa-quadratic", "dataset": "embedded", "train_subset": 80,
        "val_fraction": 0.05, "batch_size": 20, "eval_batch_size": 500, "lr": 0.05,
        "epochs": 1, "threads": 1,
        "model_args": {"hidden_size": 8, "num_layers": 1, "heads": 2, "ffn_size": 16}}


@pytest.mark.parametrize(("every", "expected"), [(0, [2, 2, 2, 2]), (2, [2, 2, 1, 2, 2, 1])])
def test_one_collective_per_step_and_one_more_after_a_step_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, every: int,
        expected: list[int]) -> None:
    """Each step agrees on (non-finite loss, stop signal) in a single call; a step that writes
    a checkpoint asks about the stop signal once more, after the write."""
    real = engine.any_rank
    calls: list[int] = []

    def counting(flags: list[bool], info: DistInfo) -> list[bool]:
        calls.append(len(flags))
        return real(flags, info)

    monkeypatch.setattr(engine, "any_rank", counting)
    cfg = config_from_dict({**TINY, "out_dir": str(tmp_path), "name": "r",
                            "checkpoint_every_steps": every, "keep_last": 1})
    train(cfg, log=lambda _m: None, progress_bar=False)
    # train_subset=80 images / batch 20 = 4 steps; with every=2, steps 2 and 4 write a checkpoint
    assert calls == expected
