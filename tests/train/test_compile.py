"""``compile=true``: every model trains under torch.compile (inductor) and matches eager.

Compiling is slow on a small CPU (tens of seconds per model on 2 cores; see the README), so each
model's tiny variant is compiled once, for a training step's forward and backward, with dropout
off so that eager and compiled runs draw nothing random and must agree to float32 rounding. The
trainer is then run with ``compile=true`` at the same shapes (inductor's cache serves the
compiled graph again) and compared with the same run eager: same losses, same weights.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters

from attnconv.models import create_model, list_models
from attnconv.train import load_checkpoint, train
from attnconv.train.config import config_from_dict
from attnconv.train.engine import compile_model

pytestmark = pytest.mark.slow

TINY_SA = {"hidden_size": 16, "num_layers": 1, "heads": 4, "ffn_size": 16, "dropout": 0.0,
           "attn_dropout": 0.0}
TINY = {"resnet18": {"base_width": 4},
        "sa-learned-content": {**TINY_SA, "downsample": 4, "qk_dim": 8}}
BATCH = 4


def tiny_args(name: str) -> dict[str, object]:
    return TINY.get(name, TINY_SA)


@pytest.fixture(autouse=True)
def one_compile_thread() -> Iterator[None]:
    """Inductor compiles in this process: no pool of compile workers on a small machine."""
    from torch._inductor import config

    with config.patch(compile_threads=1):
        yield
    torch._dynamo.reset()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    # Some exact gradients are 0 (a key bias does not change a softmax): floor the scale at 1.
    return float((a - b).norm() / b.norm().clamp_min(1.0))


@pytest.mark.parametrize("name", list_models())
def test_compiled_training_step_equals_eager(name: str) -> None:
    torch.manual_seed(0)
    eager = create_model(name, num_classes=10, in_chans=1, image_size=28,
                         **tiny_args(name)).train()
    model = copy.deepcopy(eager)
    counters.clear()
    compiled = compile_model(model, torch.device("cpu"))  # inductor, as `compile: true` does
    x = torch.randn(BATCH, 1, 28, 28)
    y = torch.randint(0, 10, (BATCH,))
    outputs = []
    for net in (eager, compiled):
        logits = net(x)
        F.cross_entropy(logits, y).backward()
        outputs.append(logits.detach())
    assert counters["stats"]["unique_graphs"] >= 1  # compiled, not run eagerly
    assert counters["inductor"]["fxgraph_cache_miss"] + counters["inductor"]["fxgraph_cache_hit"] \
        >= 1  # by inductor
    assert _rel(outputs[1], outputs[0]) < 1e-5
    named = dict(eager.named_parameters())
    for key, param in model.named_parameters():
        assert param.grad is not None, key
        assert _rel(param.grad, named[key].grad) < 1e-5, key


def _run(tmp_path: Path, name: str, compile_: bool) -> tuple[dict, dict[str, torch.Tensor]]:
    cfg = config_from_dict({
        "model": "sa-quadratic", "dataset": "embedded", "train_subset": 10,
        "val_fraction": 0.2, "batch_size": BATCH, "epochs": 2, "lr": 0.05, "threads": 1,
        "model_args": tiny_args("sa-quadratic"), "compile": compile_,
        "out_dir": str(tmp_path), "name": name})
    result = train(cfg, log=lambda _m: None)
    weights = load_checkpoint(tmp_path / name / "checkpoints" / "last.safetensors")
    return result, dict(weights.section("model"))


def test_trainer_with_compile_matches_eager(tmp_path: Path) -> None:
    compiled, weights_c = _run(tmp_path, "compiled", True)
    eager, weights_e = _run(tmp_path, "eager", False)
    assert "compile: true" in (tmp_path / "compiled" / "config.yaml").read_text()
    assert set(weights_c) == set(weights_e)  # no torch.compile prefix in the checkpoint
    for key, value in weights_e.items():
        assert _rel(weights_c[key], value) < 1e-5, key
    for key in ("test_accuracy", "test_loss", "best_val_accuracy"):
        assert compiled[key] == pytest.approx(eager[key], rel=1e-4, abs=1e-6), key


def test_bench_compares_compiled_and_eager_training() -> None:
    """The bench row, on the tiny configuration (backend "eager": dynamo without codegen)."""
    from attnconv.bench import (
        bench_compile,
        format_result,
        full_config,
        quick_config,
        tiny_config,
    )

    assert full_config("cpu").compile_models == ("sa-quadratic",)
    assert full_config("cpu").compile_backend == "inductor"
    assert quick_config("cpu").compile_models == ()
    cfg = tiny_config("cpu")
    row = bench_compile(cfg, "sa-quadratic", torch.device("cpu"))
    assert row["backend"] == "eager" and row["batch"] == cfg.model_batch
    assert row["eager_train_images_s"] > 0 and row["compiled_train_images_s"] > 0
    assert row["speedup"] == pytest.approx(row["compiled_train_images_s"]
                                           / row["eager_train_images_s"])
    assert row["compile_s"] >= 0
    result = {"config": {"mode": "tiny"}, "machine": {"cpu": "x", "cpu_count": 1, "threads": 1,
              "torch": "t", "device": "cpu"}, "peak": {"fp32_gflops": 1.0, "fp32_size": 1,
              "bf16_gflops": 1.0, "bf16_size": 1}, "layers": [], "models": [], "targets": [],
              "notes": [], "seconds": 1.0, "compile": [row]}
    table = format_result(result)
    assert "## torch.compile" in table
    assert (f"| sa-quadratic | {cfg.model_batch} | eager | {row['eager_train_images_s']:.1f} | "
            f"{row['compiled_train_images_s']:.1f} | {row['speedup']:.2f}x |") in table


def test_compile_model_keeps_the_contiguous_layout_on_the_cpu(monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    """On a CPU, inductor's layout optimisation (channels-last convolution inputs, which reach
    oneDNN's crashing AVX2 strided 1x1 backward) is off; elsewhere torch.compile's defaults."""
    calls: list[dict[str, object]] = []
    monkeypatch.setattr(torch, "compile", lambda net, **kwargs: calls.append(kwargs) or net)
    net = torch.nn.Linear(2, 2)
    assert compile_model(net, torch.device("cpu")) is net
    assert calls[-1] == {"backend": "inductor", "options": {"layout_optimization": False}}
    compile_model(net, torch.device("cuda"))
    assert calls[-1] == {"backend": "inductor"}
    compile_model(net, torch.device("cpu"), backend="eager")
    assert calls[-1] == {"backend": "eager"}
