"""Fast paths on each device: fp32 equal to the reference, bf16 autocast close to float64.

Parametrised by device: ``cpu`` always runs, ``cuda`` runs where a CUDA device is available
(``scripts/gpu-check.sh`` selects these with ``-k cuda``). The float64 exactness of every
algorithm is tests/layers/test_fast_paths.py's job; here each algorithm runs in the precision
training uses on that device, against the reference on the same device and against a float64
CPU computation of the same layer (the truth). TF32 is off: "fp32" means fp32.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import pytest
import torch

from attnconv.layers import SelfAttention2d
from attnconv.models import create_model

DEVICES = [pytest.param("cpu", id="cpu"),
           pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(
               not torch.cuda.is_available(), reason="needs a CUDA device"))]
LAYERS = {
    "quadratic": dict(encoding="quadratic"),
    "quadratic-full": dict(encoding="quadratic-full"),
    "learned": dict(encoding="learned", max_size=16),
    "learned+content": dict(encoding="learned", content=True, max_size=16),
    "quadratic+content": dict(encoding="quadratic", content=True),
}
TINY = {"hidden_size": 16, "num_layers": 2, "heads": 4, "ffn_size": 16, "attn_dropout": 0.0}
MODELS = {"sa-quadratic": TINY, "sa-learned": TINY,
          "sa-learned-content": {**TINY, "downsample": 4, "qk_dim": 8}}


@pytest.fixture(autouse=True)
def strict_fp32() -> Iterator[None]:
    """No TF32 in matrix products or convolutions while a test runs."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def _bf16_supported(device: str) -> bool:
    return device == "cpu" or torch.cuda.is_bf16_supported()


def _autocast(device: str, bf16: bool) -> contextlib.AbstractContextManager[object]:
    return torch.autocast(device, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def _outputs_and_grads(module: torch.nn.Module, x: torch.Tensor, device: str,
                       bf16: bool = False) -> list[torch.Tensor]:
    """Output and the gradients of input and parameters, as float64 on the CPU."""
    x = x.detach().clone().requires_grad_(True)
    with _autocast(device, bf16):
        y = module(x)
    params = [p for p in module.parameters() if p.requires_grad]
    grads = torch.autograd.grad(y.double().square().sum(), [x, *params])
    return [t.detach().double().cpu() for t in (y, *grads)]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    # Some exact gradients are 0 (a key bias does not change a softmax): floor the scale at 1.
    return float((a - b).norm() / b.norm().clamp_min(1.0))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_fast_paths_on_device(device: str, name: str) -> None:
    torch.manual_seed(0)
    truth_layer = SelfAttention2d(12, 3, out_dim=10, **LAYERS[name]).double().eval()
    x64 = torch.randn(2, 5, 9, 12, dtype=torch.float64)
    truth_layer.impl = "reference"
    truth = _outputs_and_grads(truth_layer, x64, "cpu")
    layer = copy.deepcopy(truth_layer).float().to(device)
    x = x64.float().to(device)
    algorithms = [a for a in layer.applicable_algorithms() if a != "reference"]
    assert algorithms, f"{name} has no fast path"
    layer.impl = "reference"
    ref = _outputs_and_grads(layer, x, device)
    for a, b in zip(ref, truth, strict=True):
        assert _rel(a, b) < 1e-5
    for algorithm in algorithms:
        layer.impl = algorithm
        assert layer.algorithm() == algorithm
        fast = _outputs_and_grads(layer, x, device)
        for a, b, t in zip(fast, ref, truth, strict=True):  # fp32: equal up to rounding
            assert _rel(a, b) < 1e-5 and _rel(a, t) < 1e-5, algorithm
        if _bf16_supported(device):  # bf16 keeps 8 bits: ~0.4% per rounding
            low = _outputs_and_grads(layer, x, device, bf16=True)
            assert _rel(low[0], truth[0]) < 3e-2, algorithm
            for g, t in zip(low[1:], truth[1:], strict=True):
                assert _rel(g, t) < 1e-1, algorithm


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(MODELS))
def test_paper_models_fast_equals_reference_on_device(device: str, name: str) -> None:
    """A training step's forward and backward: the fast paths give the reference's numbers."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_chans=3, image_size=16,
                         **MODELS[name]).to(device).train()
    x = torch.randn(4, 3, 16, 16, device=device)
    layers = [m for m in model.modules() if isinstance(m, SelfAttention2d)]
    assert layers

    def run(impl: str) -> list[torch.Tensor]:
        for layer in layers:
            layer.impl = impl
        torch.manual_seed(1)  # the same dropout masks elsewhere in the model
        return _outputs_and_grads(model, x, device)

    fast, ref = run("auto"), run("reference")
    for a, b in zip(fast, ref, strict=True):
        assert _rel(a, b) < 1e-5
    if _bf16_supported(device):
        for layer in layers:
            layer.impl = "auto"
        torch.manual_seed(1)
        low = _outputs_and_grads(model, x, device, bf16=True)
        assert _rel(low[0], ref[0]) < 5e-2
        assert all(torch.isfinite(g).all() for g in low[1:])
