"""A precision the CPU cannot run natively is named in a warning when training starts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from attnconv.train import train
from attnconv.train.config import config_from_dict
from attnconv.train.engine import slow_precision_warning

CPU = torch.device("cpu")


def _cpu_has(monkeypatch: pytest.MonkeyPatch, *, bf16: bool, amx: bool, amx_fp16: bool) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_amx_fp16_supported", lambda: amx_fp16)


def test_bf16_warns_only_without_native_support(monkeypatch: pytest.MonkeyPatch) -> None:
    _cpu_has(monkeypatch, bf16=False, amx=False, amx_fp16=False)
    message = slow_precision_warning(CPU, "bf16")
    assert message is not None and "precision=bf16" in message and "precision=fp32" in message
    assert "fp16" in (slow_precision_warning(CPU, "fp16") or "")
    assert slow_precision_warning(CPU, "fp32") is None
    assert slow_precision_warning(torch.device("cuda"), "bf16") is None  # not a CPU question
    _cpu_has(monkeypatch, bf16=True, amx=False, amx_fp16=False)
    assert slow_precision_warning(CPU, "bf16") is None
    assert slow_precision_warning(CPU, "fp16") is not None
    _cpu_has(monkeypatch, bf16=False, amx=True, amx_fp16=True)
    assert slow_precision_warning(CPU, "bf16") is None
    assert slow_precision_warning(CPU, "fp16") is None


@pytest.mark.parametrize("native", [False, True])
def test_training_logs_the_warning(native: bool, monkeypatch: pytest.MonkeyPatch,
                                   tmp_path: Path) -> None:
    _cpu_has(monkeypatch, bf16=native, amx=False, amx_fp16=False)
    cfg = config_from_dict({
        "model": "sa-quadratic", "dataset": "embedded", "train_subset": 8, "val_fraction": 0.25,
        "batch_size": 4, "epochs": 1, "threads": 1, "precision": "bf16", "out_dir": str(tmp_path),
        "name": "bf16", "model_args": {"hidden_size": 8, "num_layers": 1, "heads": 2,
                                       "ffn_size": 8, "dropout": 0.0, "attn_dropout": 0.0}})
    lines: list[str] = []
    train(cfg, log=lines.append)
    warned = [line for line in lines if "precision=bf16 on a CPU without native" in line]
    assert len(warned) == (0 if native else 1), lines
