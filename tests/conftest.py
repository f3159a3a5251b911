"""Fixtures for the whole suite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from attnconv.train import train
from attnconv.train.config import config_from_dict


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tests use tiny tensors: one intra-op thread avoids OpenMP overhead and oversubscribing
    the cores when subprocesses run beside the test process (and restores what a test set)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


TINY_SA_ARGS = {"hidden_size": 16, "num_layers": 2, "heads": 4, "ffn_size": 16,
                "attn_dropout": 0.0}


def train_tiny(root: Path, name: str, model: str, model_args: dict[str, object]) -> Path:
    """Train a tiny model for 2 epochs on 200 embedded images; return its run directory."""
    cfg = config_from_dict({
        "model": model, "dataset": "embedded", "train_subset": 200, "val_fraction": 0.01,
        "batch_size": 50, "epochs": 2, "threads": 1, "out_dir": str(root), "name": name,
        "model_args": model_args})
    train(cfg, log=lambda _m: None)
    return root / name


@pytest.fixture(scope="session")
def quadratic_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 4-head sa-quadratic run on the embedded Fashion-MNIST (14x14 tokens)."""
    return train_tiny(tmp_path_factory.mktemp("runs"), "quadratic", "sa-quadratic", TINY_SA_ARGS)


@pytest.fixture(scope="session")
def content_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 4-head sa-learned-content run (7x7 tokens: downsample 4, to stay fast)."""
    return train_tiny(tmp_path_factory.mktemp("runs"), "content", "sa-learned-content",
                      {**TINY_SA_ARGS, "downsample": 4, "qk_dim": 8})


@pytest.fixture(scope="session")
def cnn_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ResNet18 (base width 4) run."""
    return train_tiny(tmp_path_factory.mktemp("runs"), "cnn", "resnet18", {"base_width": 4})


def capture_layer_inputs(model: torch.nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """The input each attention layer receives, captured independently with pre-hooks."""
    from attnconv.analysis import attention_layers

    seen: list[torch.Tensor] = []
    handles = [layer.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
               for _, layer in attention_layers(model)]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for handle in handles:
            handle.remove()
    return seen


@pytest.fixture(name="layer_inputs")
def layer_inputs_fixture() -> object:
    """:func:`capture_layer_inputs`, for tests that check recorded maps independently."""
    return capture_layer_inputs
