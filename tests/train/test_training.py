"""Training runs on the embedded data: learning, files, exact resume, DDP, errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attnconv.errors import CheckpointError, ConfigError
from attnconv.train import load_checkpoint, train
from attnconv.train.config import config_from_dict

TINY = {"model": "sa-quadratic", "dataset": "embedded", "train_subset": 400,
        "val_fraction": 0.05, "batch_size": 40, "eval_batch_size": 500, "lr": 0.05,
        "model_args": {"hidden_size": 16, "num_layers": 2, "heads": 4, "ffn_size": 32,
                       "dropout": 0.1, "attn_dropout": 0.0},
        "threads": 1}


def tiny(tmp_path: Path, name: str, **kw) -> object:
    return config_from_dict({**TINY, "out_dir": str(tmp_path), "name": name, **kw})


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_short_run_learns_and_writes_its_files(tmp_path: Path) -> None:
    result = train(tiny(tmp_path, "a", epochs=3, schedule="constant"), log=lambda _m: None)
    run = tmp_path / "a"
    metrics = rows(run / "metrics.jsonl")
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]
    assert metrics[-1]["val_accuracy"] > 0.2  # 10 classes: chance is 0.1
    assert result["test_accuracy"] == json.loads((run / "results.json").read_text())[
        "test_accuracy"]
    heads = rows(run / "heads.jsonl")
    assert [h["epoch"] for h in heads] == [0, 1, 2, 3]
    assert heads[0]["layers"][0]["centers"] != heads[-1]["layers"][0]["centers"]  # heads moved
    best = load_checkpoint(run / "checkpoints" / "best.safetensors")
    assert best.meta["progress"]["best_epoch"] == result["best_epoch"]
    assert (run / "config.yaml").is_file()


def test_resume_mid_epoch_continues_exactly(tmp_path: Path) -> None:
    """A run resumed from a mid-epoch checkpoint ends bit-identical to an uninterrupted one."""
    quiet = {"log": lambda _m: None}
    full = tiny(tmp_path, "full", epochs=2, checkpoint_every_steps=3, keep_last=10,
                deterministic=True, model_args={**TINY["model_args"], "attn_dropout": 0.1})
    train(full, **quiet)
    steps = sorted((tmp_path / "full" / "checkpoints").glob("step-*.safetensors"))
    mid = steps[1]  # step 6 of 9 per epoch: in the middle of epoch 1
    assert load_checkpoint(mid).meta["progress"]["step_in_epoch"] == 6
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copy(tmp_path / "full" / "config.yaml", resumed / "config.yaml")
    shutil.copy(tmp_path / "full" / "metrics.jsonl", resumed / "metrics.jsonl")  # rewound on resume
    shutil.copy(mid, resumed / "checkpoints" / mid.name)
    train(resume=resumed, **quiet)
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.safetensors")
    b = load_checkpoint(resumed / "checkpoints" / "last.safetensors")
    for name, tensor in a.section("model").items():
        assert torch.equal(tensor, b.section("model")[name]), name
    for name, tensor in a.section("optim").items():
        assert torch.equal(tensor, b.section("optim")[name]), name
    ra, rb = rows(tmp_path / "full" / "metrics.jsonl"), rows(resumed / "metrics.jsonl")
    assert len(ra) == len(rb) == 2
    for x, y in zip(ra, rb, strict=True):
        for key in ["epoch", "step", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                    "lr"]:
            assert x[key] == y[key], key


def test_existing_run_is_never_overwritten(tmp_path: Path) -> None:
    cfg = tiny(tmp_path, "a", epochs=1, train_subset=80)
    train(cfg, log=lambda _m: None)
    before = (tmp_path / "a" / "checkpoints" / "last.safetensors").read_bytes()
    with pytest.raises(ConfigError, match="--resume"):
        train(cfg, log=lambda _m: None)
    assert (tmp_path / "a" / "checkpoints" / "last.safetensors").read_bytes() == before


def test_resume_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a run directory"):
        train(resume=tmp_path)
    (tmp_path / "config.yaml").write_text("name: x\n")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        train(resume=tmp_path, log=lambda _m: None)


def test_batch_larger_than_data(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="lower batch_size"):
        train(tiny(tmp_path, "a", epochs=1, train_subset=10, batch_size=40), log=lambda _m: None)


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tmp_path: Path) -> None:
    """torchrun with 2 gloo processes == 1 process with the same global batch."""
    args = ["dataset=embedded", "model=sa-quadratic", "train_subset=160", "batch_size=40",
            "val_fraction=0.02", "epochs=1", "lr=0.05", "threads=1", "augment=true",
            "model_args={hidden_size: 16, num_layers: 1, heads: 2, ffn_size: 16, dropout: 0.0, "
            "attn_dropout: 0.0}", f"out_dir={tmp_path}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "attnconv", "train", "--no-progress",
                             "name=single", *args], env=env, capture_output=True, text=True,
                            timeout=300)
    assert single.returncode == 0, single.stderr
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node", "2", "-m", "attnconv", "train", "--no-progress",
                          "name=ddp", *args], env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr
    a = rows(tmp_path / "single" / "metrics.jsonl")[0]
    b = rows(tmp_path / "ddp" / "metrics.jsonl")[0]
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
    assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-4)
    wa = load_checkpoint(tmp_path / "single" / "checkpoints" / "last.safetensors").section("model")
    wb = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.safetensors").section("model")
    for name, tensor in wa.items():
        torch.testing.assert_close(wb[name], tensor, atol=1e-5, rtol=1e-4)
    assert json.loads((tmp_path / "ddp" / "results.json").read_text())["world_size"] == 2
