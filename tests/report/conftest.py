"""Tiny trained runs for the report tests (trained once per session, ~4 s)."""

from __future__ import annotations

from pathlib import Path

import pytest

from attnconv.train import train
from attnconv.train.config import config_from_dict

SA_ARGS = {"hidden_size": 16, "num_layers": 2, "heads": 4, "ffn_size": 16, "attn_dropout": 0.0}
CNN_ARGS = {"base_width": 4}


def _train(root: Path, name: str, model: str, model_args: dict[str, object]) -> Path:
    cfg = config_from_dict({
        "model": model, "dataset": "embedded", "train_subset": 200, "val_fraction": 0.01,
        "batch_size": 50, "epochs": 2, "threads": 1, "out_dir": str(root), "name": name,
        "model_args": model_args})
    train(cfg, log=lambda _m: None)
    return root / name


@pytest.fixture(scope="session")
def report_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny sa-quadratic run (14x14 tokens) and a tiny ResNet18 run, both 2 epochs."""
    root = tmp_path_factory.mktemp("report-runs")
    return {"sa": _train(root, "quadratic", "sa-quadratic", SA_ARGS),
            "cnn": _train(root, "cnn", "resnet18", CNN_ARGS)}
