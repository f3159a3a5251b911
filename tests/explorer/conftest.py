"""Tiny trained runs for the explorer tests (trained once per session, ~5 s)."""

from __future__ import annotations

from pathlib import Path

import pytest

from attnconv.train import train
from attnconv.train.config import config_from_dict

TINY_ARGS = {"hidden_size": 16, "num_layers": 2, "heads": 4, "ffn_size": 16,
             "attn_dropout": 0.0}


def _train(root: Path, name: str, model: str, **model_args: object) -> Path:
    cfg = config_from_dict({
        "model": model, "dataset": "embedded", "train_subset": 200, "val_fraction": 0.01,
        "batch_size": 50, "epochs": 2, "threads": 1, "out_dir": str(root), "name": name,
        "model_args": {**TINY_ARGS, **model_args}})
    train(cfg, log=lambda _m: None)
    return root / name


@pytest.fixture(scope="session")
def quadratic_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 4-head sa-quadratic run on the embedded Fashion-MNIST (14x14 tokens)."""
    return _train(tmp_path_factory.mktemp("explorer-runs"), "quadratic", "sa-quadratic")


@pytest.fixture(scope="session")
def content_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 4-head sa-learned-content run (7x7 tokens: downsample 4, to stay fast)."""
    return _train(tmp_path_factory.mktemp("explorer-runs"), "content", "sa-learned-content",
                  downsample=4, qk_dim=8)
