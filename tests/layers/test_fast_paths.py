"""Every exact fast algorithm against the reference computation: outputs and gradients.

Runs in float64 (``conftest.py``) on several grid sizes, square and not. The reference is
``impl="reference"``; the fast path is whatever :meth:`SelfAttention2d.algorithm` picks.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnconv.layers import SelfAttention2d
from attnconv.layers.attention import reference_attention
from attnconv.layers.content import key_features
from attnconv.layers.dense import dense_chunk, dropout_mask
from attnconv.layers.learned import relative_logits
from attnconv.layers.separable import factor_dropout, separable_attention

SIZES = [(1, 1), (5, 9), (9, 2), (16, 16)]
CASES = {
    # name: (layer kwargs, the exact fast algorithms for it in eval mode)
    "quadratic": (dict(encoding="quadratic"), ("separable", "dense")),
    "learned": (dict(encoding="learned", max_size=16), ("separable", "dense")),
    "quadratic-value-proj": (dict(encoding="quadratic", head_dim=3, value_proj=True),
                             ("separable",)),
    "quadratic-full": (dict(encoding="quadratic-full"), ("dense",)),
    "learned+content": (dict(encoding="learned", content=True, max_size=16), ("fused",)),
    "quadratic+content": (dict(encoding="quadratic", content=True), ("fused",)),
    "quadratic-full+content": (dict(encoding="quadratic-full", content=True), ("fused",)),
    "content-only": (dict(encoding="none", content=True), ("fused",)),
    "learned+content-value-proj": (dict(encoding="learned", content=True, max_size=16,
                                        head_dim=3, value_proj=True), ("fused",)),
}


def _outputs_and_grads(layer: SelfAttention2d, x: torch.Tensor) -> list[torch.Tensor]:
    y = layer(x)
    params = [p for p in layer.parameters() if p.requires_grad]
    grads = torch.autograd.grad(y.square().sum(), [x, *params])
    return [y.detach(), *grads]


def _assert_matches_reference(layer: SelfAttention2d, x: torch.Tensor, seed: int = 0) -> None:
    torch.manual_seed(seed)
    fast = _outputs_and_grads(layer, x)
    impl, layer.impl = layer.impl, "reference"
    try:
        torch.manual_seed(seed)
        ref = _outputs_and_grads(layer, x)
    finally:
        layer.impl = impl
    torch.testing.assert_close(fast[0], ref[0], atol=1e-12, rtol=1e-10)
    for g_fast, g_ref in zip(fast[1:], ref[1:], strict=True):
        torch.testing.assert_close(g_fast, g_ref, atol=1e-11, rtol=1e-9)


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("size", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
def test_fast_path_equals_reference(name: str, size: tuple[int, int]) -> None:
    kwargs, algorithms = CASES[name]
    torch.manual_seed(7)
    layer = SelfAttention2d(6, 3, out_dim=5, **kwargs).eval()
    assert layer.applicable_algorithms() == (*algorithms, "reference")
    x = torch.randn(2, *size, 6, requires_grad=True)
    for algorithm in algorithms:
        layer.impl = algorithm
        assert layer.algorithm() == algorithm
        _assert_matches_reference(layer, x)
        # the attention maps returned by the fast path are the reference's, too
        _, attn_fast = layer(x, return_attention=True)
        with reference_attention():
            _, attn_ref = layer(x, return_attention=True)
        torch.testing.assert_close(attn_fast, attn_ref, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("encoding", ["quadratic", "learned", "quadratic-full"])
def test_training_without_dropout_uses_the_fast_path(encoding: str) -> None:
    torch.manual_seed(8)
    layer = SelfAttention2d(4, 2, encoding=encoding, max_size=7).train()
    assert layer.algorithm() == ("dense" if encoding == "quadratic-full" else "separable")
    _assert_matches_reference(layer, torch.randn(3, 7, 5, 4, requires_grad=True))


@pytest.mark.parametrize("encoding", ["quadratic", "learned", "quadratic-full"])
def test_dense_dropout_keeps_the_paper_semantics(encoding: str) -> None:
    """Dropout on the probabilities, an independent mask per image, head, query and key."""
    torch.manual_seed(9)
    b, h, w, heads, p = 3, 4, 5, 2, 0.3
    n = h * w
    layer = SelfAttention2d(4, heads, encoding=encoding, attn_dropout=p, max_size=5).train()
    assert layer.algorithm() == "dense"
    x = torch.randn(b, h, w, 4, requires_grad=True)
    torch.manual_seed(123)
    y = layer(x)
    grads = torch.autograd.grad(y.square().sum(), [x, *layer.parameters()])
    # The dense path draws a keep-mask over (B, N heads, N) = (b, q, h, k) (one chunk here).
    assert dense_chunk(x, heads) == b
    torch.manual_seed(123)
    keep = dropout_mask(b, n * heads, n, p, device=x.device)
    mask = keep.view(b, n, heads, n).permute(0, 2, 1, 3)  # (b, heads, q, k)
    assert not torch.equal(mask[0], mask[1])  # masks differ between images

    def expected(x: torch.Tensor) -> torch.Tensor:
        probs = layer.attention(x).reshape(1, heads, n, n) * mask / (1 - p)  # (b, heads, N, N)
        mixed = probs @ x.reshape(b, 1, n, 4)  # (b, heads, N, D)
        return layer.out(mixed.transpose(1, 2).reshape(b, h, w, heads * 4))

    y_ref = expected(x)
    grads_ref = torch.autograd.grad(y_ref.square().sum(), [x, *layer.parameters()])
    torch.testing.assert_close(y, y_ref, atol=1e-12, rtol=1e-10)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, atol=1e-11, rtol=1e-9)


@pytest.mark.parametrize("encoding", ["quadratic", "learned"])
def test_factor_dropout_is_separable_and_matches_its_reference(encoding: str) -> None:
    torch.manual_seed(10)
    layer = SelfAttention2d(4, 2, encoding=encoding, attn_dropout=0.4,
                            attn_dropout_mode="factors", max_size=6).train()
    assert layer.algorithm() == "separable"
    _assert_matches_reference(layer, torch.randn(3, 6, 5, 4, requires_grad=True), seed=5)
    layer.eval()
    assert layer.algorithm() == "separable"


def _fused_with_mask(layer: SelfAttention2d, x: torch.Tensor, mask: torch.Tensor,
                     scale: float) -> torch.Tensor:
    """The layer's output with the probabilities ``(B, heads, N, N)`` times ``mask * scale``.

    Computed here from :meth:`SelfAttention2d.attention` (the explicit ``(HW)^2`` softmax),
    the values and the output projection: the attention-dropout law written out.
    """
    b, h, w, _ = x.shape
    probs = layer.attention(x).reshape(b, layer.heads, h * w, h * w)
    mixed = (probs * mask * scale) @ layer.values(x)  # (B, heads, N, head_dim)
    return layer.out(mixed.transpose(1, 2).reshape(b, h, w, layer.heads * layer.head_dim))


def test_fused_content_attention_dropout_trains() -> None:
    """The fused kernel drops each probability of each image and head independently with
    probability p and scales the survivors by 1 / (1 - p): its output equals the explicit
    computation with the mask it draws. On the CPU ``scaled_dot_product_attention`` with
    dropout runs PyTorch's math kernel, which draws the keep-mask as
    ``empty_like(probs).bernoulli_(1 - p)`` over ``(B, heads, N, N)``: the same seed gives
    the same mask here."""
    torch.manual_seed(18)
    p = 0.3  # not 0.5: keeping with probability p instead of 1 - p must show
    layer = SelfAttention2d(4, 2, encoding="learned", content=True, attn_dropout=p,
                            max_size=4, impl="fused")
    assert layer.algorithm() == "fused"
    x = torch.randn(2, 4, 3, 4, requires_grad=True)
    b, n = x.shape[0], x.shape[1] * x.shape[2]
    outputs = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        y = layer(x)
        torch.manual_seed(seed)
        mask = torch.empty(b, layer.heads, n, n).bernoulli_(1 - p)
        assert 0 < mask.mean().item() < 1 and not torch.equal(mask[0], mask[1])  # per image
        assert not torch.equal(mask[:, 0], mask[:, 1])  # per head
        expected = _fused_with_mask(layer, x, mask, 1 / (1 - p))
        torch.testing.assert_close(y, expected, atol=1e-12, rtol=1e-10)
        # The check can tell: unscaled survivors, no mask, one mask for the batch all differ.
        for wrong in (_fused_with_mask(layer, x, mask, 1.0),
                      _fused_with_mask(layer, x, torch.ones_like(mask), 1.0),
                      _fused_with_mask(layer, x, mask[:1].expand_as(mask), 1 / (1 - p))):
            assert (y - wrong).abs().max().item() > 1e-3
        # Gradients flow through the same mask (x, the projections and the relative tables).
        weight = torch.randn_like(y)
        params = [x, layer.encoding.row_embeddings, *layer.out.parameters()]
        torch.manual_seed(seed)
        grads = torch.autograd.grad((layer(x) * weight).sum(), params)
        ref_grads = torch.autograd.grad((expected * weight).sum(), params)
        for got, ref in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(got, ref, atol=1e-11, rtol=1e-9)
        outputs.append(y.detach())
    assert not torch.allclose(outputs[0], outputs[1])  # fresh masks per call
    layer.eval()
    torch.testing.assert_close(layer(x), layer(x))
    torch.testing.assert_close(layer(x), _fused_with_mask(layer, x, torch.ones(1), 1.0),
                               atol=1e-12, rtol=1e-10)


def test_factor_dropout_law() -> None:
    """Joint weights are 0 or R C / (1 - p): the marginal law of probability dropout."""
    torch.manual_seed(11)
    row, col = torch.rand(2, 3, 3).softmax(-1), torch.rand(2, 4, 4).softmax(-1)
    p = 0.36
    row_b, col_b = factor_dropout(row, col, 4000, p)
    joint = row_b[:, :, :, None, :, None] * col_b[:, :, None, :, None, :]
    base = (row[:, :, None, :, None] * col[:, None, :, None, :]) / (1 - p)
    kept = joint != 0
    torch.testing.assert_close(joint[kept], base.expand_as(joint)[kept])
    assert kept.double().mean().item() == pytest.approx(1 - p, abs=0.005)
    with pytest.raises(ValueError, match="factors"):
        SelfAttention2d(4, 2, encoding="quadratic-full", attn_dropout_mode="factors")
    with pytest.raises(ValueError, match="attn_dropout_mode"):
        SelfAttention2d(4, 2, attn_dropout_mode="keys")


def test_separable_attention_chunks_and_per_image_factors() -> None:
    torch.manual_seed(12)
    x = torch.randn(5, 4, 3, 2, requires_grad=True)
    for lead in [(), (5,)]:
        row = torch.rand(*lead, 3, 4, 4).softmax(-1).requires_grad_()
        col = torch.rand(*lead, 3, 3, 3).softmax(-1).requires_grad_()
        weight = torch.randn(6, 3 * 2, requires_grad=True)
        bias = torch.randn(6, requires_grad=True)
        pattern = "hik,hjl,bkld->bijhd" if not lead else "bhik,bhjl,bkld->bijhd"
        mixed = torch.einsum(pattern, row, col, x).reshape(5, 4, 3, 6)
        torch.testing.assert_close(separable_attention(x, row, col), mixed)
        expected = mixed @ weight.t() + bias
        for chunk in (1, 2, 5):
            torch.testing.assert_close(
                separable_attention(x, row, col, weight, bias, chunk=chunk), expected)
        assert torch.autograd.gradcheck(
            lambda *t: separable_attention(*t, chunk=2), (x, row, col, weight, bias))
        assert torch.autograd.gradcheck(lambda *t: separable_attention(*t, chunk=3), (x, row, col))


def test_shared_dense_attention_chunks() -> None:
    from attnconv.layers.dense import shared_attention

    torch.manual_seed(19)
    x = torch.randn(5, 3, 2, 2, requires_grad=True)
    probs = torch.rand(3, 6, 6).softmax(-1).requires_grad_()
    weight = torch.randn(4, 3 * 2, requires_grad=True)
    bias = torch.randn(4, requires_grad=True)
    mixed = torch.einsum("hqk,bkd->bqhd", probs, x.reshape(5, 6, 2)).reshape(5, 3, 2, 6)
    torch.testing.assert_close(shared_attention(x, probs), mixed)
    for chunk in (1, 2, 5):
        torch.testing.assert_close(shared_attention(x, probs, weight, bias, chunk=chunk),
                                   mixed @ weight.t() + bias)
        for save in (False, True):  # m recomputed or kept for dW_out
            assert torch.autograd.gradcheck(
                lambda *t, c=chunk, s=save: shared_attention(*t, chunk=c, save_mixed=s),
                (x, probs, weight, bias))
    same = x[:1].expand(5, 3, 2, 2)  # five copies of one image
    y = shared_attention(same, probs, weight, bias, dropout=0.5, chunk=2)
    assert not torch.allclose(y[0], y[1])  # every image has its own mask...
    assert not torch.allclose(y[0], y[2])  # ...in every chunk


def test_diagonal_full_covariance_is_separable_only_without_gradient() -> None:
    """Sigma^-1 diagonal: exact values, but d logit / d m01 != 0, so S's gradient needs dense."""
    torch.manual_seed(13)
    layer = SelfAttention2d(4, 2, encoding="quadratic-full").eval()
    layer.encoding.set_gaussian_parameters(torch.tensor([[0.5, -1.0], [1.5, 0.0]]),
                                           torch.diag_embed(torch.tensor([[0.7, 1.3],
                                                                          [2.0, 0.4]])))
    assert layer.encoding.is_diagonal()
    x = torch.randn(2, 5, 6, 4, requires_grad=True)
    assert layer.algorithm() == "dense"  # S needs a gradient
    _assert_matches_reference(layer, x)
    grad_s = torch.autograd.grad(layer(x).square().sum(), layer.encoding.s)[0]
    assert grad_s[:, 1, 0].abs().min() > 0  # the off-diagonal gradient exists
    with torch.no_grad():
        assert layer.algorithm() == "separable"
        y = layer(x)
        with reference_attention():
            torch.testing.assert_close(y, layer(x), atol=1e-12, rtol=1e-10)
    layer.encoding.s.requires_grad_(False)
    assert layer.algorithm() == "separable"
    _assert_matches_reference(layer, x)
    with torch.no_grad():
        layer.encoding.s[0, 1, 0] = 1e-3  # no longer diagonal
    assert layer.algorithm() == "dense"


def test_query_key_factors_reproduce_the_logits() -> None:
    """row[k] + col[l] + cross k' l' equals the logits up to a constant per query."""
    torch.manual_seed(14)
    for enc_kwargs in [dict(encoding="quadratic"), dict(encoding="quadratic-full"),
                       dict(encoding="learned", max_size=6)]:
        layer = SelfAttention2d(4, 3, **enc_kwargs)
        enc = layer.encoding
        for h, w in [(1, 1), (4, 6), (5, 2)]:
            row, col, cross = enc.query_key_factors(h, w)
            feats = key_features(h, w, cross is not None, dtype=row.dtype, device=row.device)
            coef = torch.cat([row, col] + ([cross.view(3, 1, 1, 1).expand(3, h, w, 1)]
                                           if cross is not None else []), dim=-1)
            factored = (coef @ feats.t()).view(3, h, w, h, w)
            diff = (enc.logits(h, w) - factored).flatten(-2)  # (heads, H, W, keys)
            torch.testing.assert_close(diff, diff[..., :1].expand_as(diff))


def test_relative_logits_match_the_table_gather() -> None:
    torch.manual_seed(15)
    table = torch.randn(2 * 7 - 1, 3)
    q = torch.randn(2, 5, 4, 3)  # the query coordinate along the table is axis 1
    out = relative_logits(q, table, 5, 7, axis=1)  # (2, 5, 4, 5)
    for b, a, j, k in itertools.product(range(2), range(5), range(4), range(5)):
        expected = q[b, a, j] @ table[k - a + 6]
        assert out[b, a, j, k].item() == pytest.approx(expected.item(), abs=1e-12)


def test_output_hooks_fire_and_results_agree() -> None:
    torch.manual_seed(16)
    layer = SelfAttention2d(4, 2).eval()
    x = torch.randn(2, 5, 5, 4)
    y_fused = layer(x)
    seen = []
    handle = layer.out.register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    try:
        y_hooked = layer(x)
    finally:
        handle.remove()
    assert seen == [torch.Size([2, 5, 5, 8])]
    torch.testing.assert_close(y_hooked, y_fused, atol=1e-12, rtol=1e-10)


def test_no_buffers_in_checkpoints_and_non_contiguous_input() -> None:
    for kwargs in [dict(encoding="quadratic"), dict(encoding="learned", content=True,
                                                    impl="fused")]:
        layer = SelfAttention2d(4, 2, max_size=8, **kwargs)
        assert list(layer.buffers()) == []
        assert set(layer.state_dict()) == {name for name, _ in layer.named_parameters()}
        x = torch.randn(2, 4, 6, 5).permute(0, 3, 2, 1)  # (2, 5, 6, 4) non-contiguous
        _assert_matches_reference(layer.eval(), x.requires_grad_())


def test_grids_are_cached_per_size() -> None:
    from attnconv.layers.grid import axis_offsets

    assert axis_offsets(7) is axis_offsets(7)
    with torch.inference_mode():
        cached = axis_offsets(11)
    assert not cached.is_inference()  # usable by autograd later
    torch.testing.assert_close(axis_offsets(3), torch.tensor([[0, 1, 2], [-1, 0, 1],
                                                              [-2, -1, 0]]))


def test_algorithm_choice_and_reference_switch() -> None:
    layer = SelfAttention2d(4, 2, attn_dropout=0.1)
    assert layer.algorithm() == "dense"  # training with probability dropout
    layer.eval()
    assert layer.algorithm() == "separable"
    with reference_attention():
        assert layer.algorithm() == "reference"
    assert layer.algorithm() == "separable"
    assert SelfAttention2d(4, 2, impl="reference").eval().algorithm() == "reference"
    assert SelfAttention2d(4, 2, encoding="quadratic-full").eval().algorithm() == "dense"
    content = SelfAttention2d(4, 2, content=True).eval()
    with torch.no_grad():
        assert content.algorithm() == "fused"  # inference: the fused kernel...
        assert content.algorithm(16 * 16) == "reference"  # ...from 512 tokens on (CPU)
        assert content.algorithm(32 * 32) == "fused"
    # training on a CPU: the reference's matrix products beat the fused CPU backward
    assert content.algorithm() == "reference"
    projected = SelfAttention2d(4, 2, head_dim=3, attn_dropout=0.1)
    assert projected.algorithm() == "reference"  # projected values under probability dropout
    with pytest.raises(ValueError, match="unknown impl"):
        SelfAttention2d(4, 2, impl="fast")
    forced = SelfAttention2d(4, 2, encoding="quadratic-full", impl="separable").eval()
    with pytest.raises(ValueError, match="not exact"):
        forced(torch.randn(1, 3, 3, 4))


# ------------------------------------------------------------------------------------------
# Converted convolutions (Theorem 1) through the fast path: still exact.
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=(3, 5), padding=(1, 2), stride=2),
    dict(kernel_size=3, dilation=2, padding="same", padding_mode="reflect"),
    dict(kernel_size=2, groups=2),
])
def test_converted_conv_is_exact_on_the_fast_path(kwargs: dict) -> None:
    from attnconv.theorem import conv_to_attention, max_errors

    torch.manual_seed(17)
    conv = nn.Conv2d(4, 6, **kwargs).double()
    module = conv_to_attention(conv)  # alpha ~ 746 in float64: one-hot rows
    x = torch.randn(2, 4, 9, 7)
    for training in (False, True):
        module.train(training)
        assert module.attention.algorithm() == "separable"
        _, rel = max_errors(module(x), conv(x))
        assert rel < 1e-12


def test_one_hot_softmax_rows_are_exact() -> None:
    """softmax(-alpha (k - i - c)^2) with alpha = 746 is bitwise one-hot in float64."""
    from attnconv.theorem import exact_alpha

    layer = SelfAttention2d(2, 1)
    layer.encoding.set_gaussian_parameters(torch.tensor([[1.0, -2.0]]), exact_alpha(torch.float64))
    row, col = layer._axis_probabilities(6, 7)
    assert torch.equal(row[0, 2], F.one_hot(torch.tensor(3), 6).double())
    assert torch.equal(col[0, 4], F.one_hot(torch.tensor(2), 7).double())
    assert math.isfinite(row.sum().item())


# ------------------------------------------------------------------------------------------
# attn_dropout_mode="batch": one mask per forward pass, shared by the batch (authors' code)
# ------------------------------------------------------------------------------------------
BATCH_SIZES = [(1, 1), (5, 9), (16, 16)]


@pytest.mark.parametrize("encoding", ["quadratic", "learned", "quadratic-full"])
@pytest.mark.parametrize("size", BATCH_SIZES, ids=[f"{h}x{w}" for h, w in BATCH_SIZES])
def test_batch_dropout_fast_paths_equal_reference_under_the_same_mask(
        encoding: str, size: tuple[int, int]) -> None:
    torch.manual_seed(20)
    layer = SelfAttention2d(6, 3, out_dim=5, encoding=encoding, attn_dropout=0.3,
                            attn_dropout_mode="batch", max_size=16).train()
    assert layer.algorithm() == "dense"
    x = torch.randn(3, *size, 6, requires_grad=True)
    for algorithm in layer.applicable_algorithms()[:-1]:  # every fast one
        layer.impl = algorithm
        _assert_matches_reference(layer, x, seed=21)  # same seed: the same mask on both sides


def _authors_layer(layer: SelfAttention2d, x: torch.Tensor, p: float) -> torch.Tensor:
    """The authors' positional-only layer, written plainly: one (heads, N, N) probability
    tensor for the batch, ``F.dropout`` on it, one product with the values, then W_out."""
    b, h, w, d = x.shape
    n, heads = h * w, layer.heads
    probs = layer.attention(x).reshape(heads, n, n)  # (heads, N, N): no batch axis
    probs = F.dropout(probs, p, training=True)  # one mask for every image
    mixed = torch.einsum("hqk,bkd->bqhd", probs, x.reshape(b, n, d))  # (B, N, heads, D)
    return nn.functional.linear(mixed.reshape(b, h, w, heads * d), layer.out.weight,
                                layer.out.bias)


@pytest.mark.parametrize("encoding", ["quadratic", "learned", "quadratic-full"])
def test_batch_dropout_is_the_authors_semantics(encoding: str) -> None:
    torch.manual_seed(22)
    p = 0.4
    layer = SelfAttention2d(4, 2, encoding=encoding, attn_dropout=p,
                            attn_dropout_mode="batch", max_size=6).train()
    x = torch.randn(3, 6, 5, 4, requires_grad=True)
    params = [x, *layer.parameters()]
    torch.manual_seed(23)
    expected = _authors_layer(layer, x, p)
    grads_expected = torch.autograd.grad(expected.square().sum(), params)
    for impl in ("auto", "reference"):
        layer.impl = impl
        torch.manual_seed(23)
        y = layer(x)
        grads = torch.autograd.grad(y.square().sum(), params)
        torch.testing.assert_close(y, expected, atol=1e-12, rtol=1e-10)
        for g, g_ref in zip(grads, grads_expected, strict=True):
            torch.testing.assert_close(g, g_ref, atol=1e-11, rtol=1e-9)
    # and the mask really drops something: not the no-dropout output
    assert not torch.allclose(expected, layer.eval()(x))


def test_batch_dropout_mask_is_shared_scaled_and_off_in_eval() -> None:
    torch.manual_seed(24)
    p = 0.25
    layer = SelfAttention2d(4, 3, encoding="quadratic", attn_dropout=p,
                            attn_dropout_mode="batch").train()
    mask = layer.batch_dropout_mask(64, device=torch.device("cpu"), dtype=torch.float64)
    assert mask.shape == (3, 64, 64)
    assert set(mask.unique().tolist()) == {0.0, 1.0 / (1.0 - p)}  # inverted-dropout scaling
    assert (mask == 0).double().mean().item() == pytest.approx(p, abs=0.02)
    # Five copies of one image: one shared mask gives five equal outputs...
    same = torch.randn(1, 8, 8, 4).expand(5, 8, 8, 4)
    for impl in ("auto", "reference"):
        layer.impl = impl
        y = layer(same)
        for i in range(1, 5):
            torch.testing.assert_close(y[i], y[0], atol=1e-12, rtol=1e-12)
        assert not torch.allclose(y, layer(same))  # ...and a fresh mask every forward pass
    # ...whereas per-image masks differ between copies.
    layer.attn_dropout_mode, layer.impl = "probabilities", "auto"
    y = layer(same)
    assert not torch.allclose(y[0], y[1])
    # Dropout is off in eval: deterministic, equal to the no-dropout layer.
    layer.attn_dropout_mode = "batch"
    layer.eval()
    torch.testing.assert_close(layer(same), layer(same))
    no_dropout = SelfAttention2d(4, 3, encoding="quadratic").eval()
    no_dropout.load_state_dict(layer.state_dict())
    torch.testing.assert_close(layer(same), no_dropout(same))


def test_batch_dropout_needs_positional_only_attention() -> None:
    with pytest.raises(ValueError, match=r"batch.*positional-only.*probabilities"):
        SelfAttention2d(4, 2, encoding="learned", content=True, attn_dropout_mode="batch")
    with pytest.raises(ValueError, match=r"batch, probabilities, factors"):
        SelfAttention2d(4, 2, attn_dropout_mode="shared")
