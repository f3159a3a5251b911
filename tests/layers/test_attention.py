"""SelfAttention2d: the reference computation, shapes, equivariance, gradients, errors."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from attnconv.errors import ShapeError
from attnconv.layers import SelfAttention2d

CONFIGS = [
    dict(encoding="quadratic"),
    dict(encoding="quadratic-full"),
    dict(encoding="learned", max_size=9),
    dict(encoding="learned", content=True, max_size=9),
    dict(encoding="quadratic", content=True),
    dict(encoding="none", content=True),
]
IDS = ["quadratic", "quadratic-full", "learned", "learned+content", "quadratic+content",
       "content-only"]


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_shapes_non_square_and_rows_sum_to_one(cfg: dict) -> None:
    torch.manual_seed(0)
    layer = SelfAttention2d(6, 3, out_dim=5, **cfg)
    y, attn = layer(torch.randn(2, 5, 9, 6), return_attention=True)
    assert y.shape == (2, 5, 9, 5)
    batch = 2 if cfg.get("content") else 1  # positional-only attention is shared by the batch
    assert attn.shape == (batch, 3, 5, 9, 5, 9)
    assert (attn >= 0).all()
    torch.testing.assert_close(attn.sum(dim=(-2, -1)), torch.ones(batch, 3, 5, 9))


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_forward_equals_explicit_weighted_sum(cfg: dict) -> None:
    """y_q = b_out + sum_h sum_k A_h[q, k] v_h(x_k) W_out^(h) (MHSA, PAPER section 1)."""
    torch.manual_seed(1)
    for value_proj, head_dim in [(None, 4), (True, 3)]:
        layer = SelfAttention2d(4, 2, head_dim=head_dim, value_proj=value_proj, out_dim=3, **cfg)
        x = torch.randn(2, 3, 4, 4)
        y, attn = layer(x, return_attention=True)
        w_out = layer.out.weight.T.reshape(2, head_dim, 3)  # (heads, D_h, D_out)
        for b, i, j in itertools.product(range(2), range(3), range(4)):
            expected = layer.out.bias.clone()
            for h, k, l in itertools.product(range(2), range(3), range(4)):
                v = x[b, k, l] if layer.value is None else (
                    layer.value(x[b, k, l]).view(2, head_dim)[h])
                a = attn[b if attn.shape[0] > 1 else 0, h, i, j, k, l]
                expected = expected + a * v @ w_out[h]
            torch.testing.assert_close(y[b, i, j], expected)


def test_content_logits_match_formula() -> None:
    torch.manual_seed(2)
    layer = SelfAttention2d(4, 2, encoding="quadratic", content=True, qk_dim=3)
    x = torch.randn(1, 2, 3, 4)
    logits = layer.logits(x)
    q = layer.query(x).view(1, 2, 3, 2, 3)
    k = layer.key(x).view(1, 2, 3, 2, 3)
    pos = layer.encoding.logits(2, 3)
    for h, i, j, a, c in itertools.product(range(2), range(2), range(3), range(2), range(3)):
        expected = q[0, i, j, h] @ k[0, a, c, h] / math.sqrt(3) + pos[h, i, j, a, c]
        assert logits[0, h, i, j, a, c].item() == pytest.approx(expected.item(), abs=1e-12)


@pytest.mark.parametrize("cfg", CONFIGS[:3], ids=IDS[:3])
def test_positional_logits_depend_on_the_shift_only(cfg: dict) -> None:
    torch.manual_seed(3)
    layer = SelfAttention2d(4, 3, **cfg)
    logits = layer.logits(torch.randn(1, 6, 7, 4))[0]  # (heads, H, W, H, W)
    for (i, j), (di, dj) in itertools.product([(0, 0), (2, 3), (5, 6)], [(0, 0), (-1, 2)]):
        ti, tj = i + di, j + dj
        if 0 <= ti < 6 and 0 <= tj < 7:
            for a, c in [(1, 1), (3, 2)]:
                if 0 <= a + di < 6 and 0 <= c + dj < 7:
                    shifted = logits[:, ti, tj, a + di, c + dj]
                    torch.testing.assert_close(logits[:, i, j, a, c], shifted)


def test_positional_attention_is_translation_equivariant_away_from_borders() -> None:
    """Interior queries of a concentrated quadratic head see the same pattern, shifted."""
    torch.manual_seed(4)
    layer = SelfAttention2d(4, 3)
    layer.encoding.set_gaussian_parameters(torch.tensor([[0.5, -1.0], [1.0, 1.0], [-1.0, 0.0]]),
                                           2.0)
    _, attn = layer(torch.randn(1, 16, 16, 4), return_attention=True)
    base = attn[0, :, 7, 7, 3:12, 3:12]  # window +-4 around query (7, 7)
    for i, j in [(6, 7), (8, 9), (7, 6)]:
        window = attn[0, :, i, j, i - 4:i + 5, j - 4:j + 5]
        torch.testing.assert_close(window, base, atol=1e-12, rtol=0)
        # and essentially all of the mass lies in that window
        assert (window.sum(dim=(-2, -1)) > 1 - 1e-12).all()


def _gradcheck_params(layer: SelfAttention2d, names: list[str], x: torch.Tensor) -> None:
    params = dict(layer.named_parameters())
    tensors = tuple(params[n].detach().clone().requires_grad_(True) for n in names)

    def fn(*values: torch.Tensor) -> torch.Tensor:
        overrides = dict(zip(names, values, strict=True))
        return torch.func.functional_call(layer, overrides, (x,))

    assert torch.autograd.gradcheck(fn, tensors, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("cfg", "names"),
    [
        (dict(encoding="quadratic"), ["encoding.centers", "encoding.log_alpha"]),
        (dict(encoding="quadratic-full"), ["encoding.centers", "encoding.s"]),
        (dict(encoding="learned", max_size=3),
         ["encoding.row_embeddings", "encoding.col_embeddings", "encoding.row_score"]),
        (dict(encoding="learned", content=True, qk_dim=2, max_size=3),
         ["encoding.row_embeddings", "encoding.col_embeddings", "query.weight", "key.weight"]),
    ],
    ids=["quadratic", "quadratic-full", "learned", "learned+content"],
)
def test_gradients_reach_the_encoding(cfg: dict, names: list[str]) -> None:
    torch.manual_seed(5)
    layer = SelfAttention2d(2, 2, **cfg)
    x = torch.randn(1, 3, 2, 2)
    _gradcheck_params(layer, names, x)
    layer(x).square().sum().backward()
    for name in names:
        grad = dict(layer.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_attention_dropout_only_in_training() -> None:
    torch.manual_seed(6)
    layer = SelfAttention2d(4, 2, attn_dropout=0.5)
    x = torch.randn(3, 4, 4, 4)
    layer.eval()
    torch.testing.assert_close(layer(x), layer(x))
    y_eval = layer(x)
    layer.train()
    y1, attn = layer(x, return_attention=True)
    assert not torch.allclose(y1, y_eval)
    # Masks differ per image of the batch even though the positional attention is shared.
    assert not torch.allclose(y1[0] - y_eval[0], y1[1] - y_eval[1])
    torch.testing.assert_close(attn.sum(dim=(-2, -1)), torch.ones(1, 2, 4, 4))


def test_no_weight_decay_names_exist() -> None:
    for enc in ["quadratic", "quadratic-full"]:
        layer = SelfAttention2d(4, 2, encoding=enc)
        names = set(dict(layer.named_parameters()))
        assert layer.no_weight_decay() and layer.no_weight_decay() <= names
    assert SelfAttention2d(4, 2, encoding="learned", max_size=2).no_weight_decay() == set()


def test_float32_and_float64() -> None:
    layer = SelfAttention2d(4, 2).float()
    assert layer(torch.randn(1, 3, 3, 4, dtype=torch.float32)).dtype == torch.float32
    assert layer.double()(torch.randn(1, 3, 3, 4)).dtype == torch.float64


# ------------------------------------------------------------------------------------------
# Bad input: each error says what to change.
# ------------------------------------------------------------------------------------------
def test_wrong_channel_count() -> None:
    layer = SelfAttention2d(8, 2)
    with pytest.raises(ShapeError, match=r"dim=8.*got 5 channels.*dim=5"):
        layer(torch.randn(1, 4, 4, 5))
    with pytest.raises(ShapeError, match=r"channels-first.*permute"):
        layer(torch.randn(1, 8, 4, 4))


def test_three_dimensional_input() -> None:
    with pytest.raises(ShapeError, match=r"\(B, H, W, 8\).*3D.*Reshape"):
        SelfAttention2d(8, 2)(torch.randn(2, 16, 8))
    assert issubclass(ShapeError, ValueError)


@pytest.mark.parametrize("heads", [0, -3])
def test_non_positive_heads(heads: int) -> None:
    with pytest.raises(ValueError, match=r"heads must be a positive integer.*heads >= 1"):
        SelfAttention2d(8, heads)


def test_other_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"unknown encoding 'gauss'.*quadratic"):
        SelfAttention2d(8, 2, encoding="gauss")
    with pytest.raises(ValueError, match="content=True"):
        SelfAttention2d(8, 2, encoding="none")
    with pytest.raises(ValueError, match="attn_dropout"):
        SelfAttention2d(8, 2, attn_dropout=1.5)
    with pytest.raises(ValueError, match="value_proj=True"):
        SelfAttention2d(8, 2, head_dim=4, value_proj=False)
    with pytest.raises(ValueError, match="dim must be a positive integer"):
        SelfAttention2d(0, 2)
