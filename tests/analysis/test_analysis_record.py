"""record_attention: the maps each layer computes on its actual input; the model is untouched."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from attnconv.analysis import attention_layers, positional_attention, record_attention
from attnconv.layers import SelfAttention2d
from attnconv.models import create_model
from attnconv.theorem import conv_to_attention

TINY = {"in_chans": 1, "image_size": 16, "hidden_size": 16, "num_layers": 2, "heads": 4,
        "ffn_size": 16}


def tiny(name: str, **kw: object) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, **{**TINY, **kw}).eval()


@pytest.mark.parametrize("name", ["sa-quadratic", "sa-quadratic-full", "sa-learned",
                                  "sa-learned-content"])
def test_maps_equal_the_layer_on_its_actual_input(name: str, layer_inputs: Callable) -> None:
    model = tiny(name)
    x = torch.randn(5, 1, 16, 16)
    maps = record_attention(model, x, batch_size=2)  # three batches
    inputs = layer_inputs(model, x)
    assert len(maps) == len(inputs) == 2
    for (_, layer), attn, inp in zip(attention_layers(model), maps, inputs, strict=True):
        with torch.no_grad():
            _, expected = layer(inp, return_attention=True)  # (B', heads, 8, 8, 8, 8)
        assert attn.shape == (5, 4, 8, 8, 8, 8)
        assert torch.allclose(attn, expected.expand_as(attn), rtol=0, atol=1e-6)
        if layer.positional_only:
            assert attn.stride(0) == 0  # one map shared by every image, no copies
            assert torch.equal(attn[0], expected[0])


def test_content_maps_do_not_depend_on_batching() -> None:
    model = tiny("sa-learned-content")
    x = torch.randn(5, 1, 16, 16)
    whole = record_attention(model, x, batch_size=5)
    split = record_attention(model, x, batch_size=2)
    for a, b in zip(whole, split, strict=True):
        assert torch.allclose(a, b, atol=1e-6)
        assert not torch.equal(a[0], a[1])  # content: each image its own maps


def test_model_is_left_unchanged() -> None:
    model = tiny("sa-learned-content")
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        before = model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    record_attention(model, x)
    with torch.no_grad():
        after = model(x)
    assert torch.equal(before, after)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert all("forward" not in layer.__dict__ for _, layer in attention_layers(model))
    assert not model.training


def test_works_in_train_mode_and_under_no_grad() -> None:
    model = tiny("sa-quadratic")
    model.train()
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        maps = record_attention(model, x)
    assert model.training and all(not m.requires_grad for m in maps)
    assert all(p.grad is None for p in model.parameters())
    sums = maps[0].sum(dim=(-2, -1))  # (B, heads, H, W)
    assert torch.allclose(sums, torch.ones_like(sums), atol=1e-5)


class Boom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = SelfAttention2d(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        self.attn(x)
        raise RuntimeError("boom")


def test_wrappers_removed_on_error_and_earlier_forward_restored() -> None:
    module = Boom()
    with pytest.raises(RuntimeError, match="boom"):
        record_attention(module, torch.randn(1, 3, 3, 4))
    assert "forward" not in module.attn.__dict__

    layer = SelfAttention2d(4, 2)
    original = layer.forward
    layer.forward = original  # an instance-level forward someone else installed
    record_attention(layer, torch.randn(2, 3, 3, 4))
    assert layer.__dict__["forward"] is original


class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = SelfAttention2d(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.attn(self.attn(x))


def test_errors() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        record_attention(Twice(), torch.randn(1, 3, 3, 4))
    with pytest.raises(ValueError, match="no SelfAttention2d"):
        record_attention(nn.Conv2d(1, 1, 3), torch.randn(1, 1, 4, 4))
    with pytest.raises(ValueError, match="non-empty"):
        record_attention(SelfAttention2d(4, 2), torch.randn(0, 3, 3, 4))
    with pytest.raises(ValueError, match="content attention"):
        positional_attention(SelfAttention2d(4, 2, content=True), (3, 3))


def test_converted_convolution_and_positional_attention() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, padding=1)
    module = conv_to_attention(conv)
    x = torch.randn(2, 2, 6, 6)
    (attn,) = record_attention(module, x)
    assert attn.shape == (2, 9, 8, 8, 8, 8)  # the padded 8x8 token grid
    assert torch.equal(attn[0], positional_attention(module.attention, (8, 8)))
    assert torch.allclose(module(x), conv(x), atol=1e-5)  # still the conv
