"""bf16 autocast: every encoding trains and infers close to fp32, with fp32 logits and softmax."""

from __future__ import annotations

import pytest
import torch

from attnconv.layers import SelfAttention2d
from attnconv.layers.precision import autocast_dtype, compute_dtype

CONFIGS = {
    "quadratic": dict(encoding="quadratic"),
    "quadratic-full": dict(encoding="quadratic-full"),
    "learned": dict(encoding="learned", max_size=5),
    "learned+content": dict(encoding="learned", content=True, max_size=5),
    "quadratic+content": dict(encoding="quadratic", content=True),
}


def _run(layer: SelfAttention2d, x: torch.Tensor, bf16: bool) -> list[torch.Tensor]:
    layer.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        y = layer(x)
    if bf16:
        assert y.dtype == torch.bfloat16
    y.float().square().mean().backward()
    grads = [x.grad] + [p.grad for p in layer.parameters()]
    assert all(g is not None and g.dtype == torch.float32 for g in grads)
    return [y.float()] + [g.float() for g in grads]  # type: ignore[misc]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    # Some exact gradients are 0 (a key bias does not change a softmax): floor the scale.
    return ((a - b).norm() / b.norm().clamp_min(1e-3)).item()


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_bf16_autocast_close_to_fp32(name: str, training: bool) -> None:
    torch.manual_seed(0)
    impl = "fused" if "content" in name else "auto"  # the fast path of each encoding
    layer = SelfAttention2d(8, 2, impl=impl, **CONFIGS[name]).float().train(training)
    x = torch.randn(2, 4, 5, 8, dtype=torch.float32)
    fp32, bf16 = _run(layer, x, False), _run(layer, x, True)
    assert _rel(bf16[0], fp32[0]) < 3e-2  # bf16 keeps 8 bits: ~0.4% per rounding
    for g16, g32 in zip(bf16[1:], fp32[1:], strict=True):
        assert _rel(g16, g32) < 1e-1


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_and_softmax_are_fp32_under_autocast(name: str) -> None:
    torch.manual_seed(1)
    layer = SelfAttention2d(8, 2, **CONFIGS[name]).float().eval()
    x = torch.randn(1, 4, 5, 8, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert autocast_dtype("cpu") == torch.bfloat16
        assert compute_dtype(x) == torch.bfloat16
        assert layer.logits(x).dtype == torch.float32
        attn = layer.attention(x)
        assert attn.dtype == torch.float32
        _, returned = layer(x, return_attention=True)
        assert returned.dtype == torch.float32
        if not layer.content:
            row, col = (layer._axis_probabilities(4, 5) if layer._separable()
                        else (attn, attn))
            assert row.dtype == col.dtype == torch.float32
    torch.testing.assert_close(attn.sum(dim=(-2, -1)), torch.ones_like(attn[..., 0, 0]))
    assert autocast_dtype("cpu") is None
