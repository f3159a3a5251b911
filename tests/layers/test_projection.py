"""The shared MHSA output projection (attnconv.layers.projection) and the paths that use it.

Each fused path must write exactly what the plain ``concat_h[SA_h] W_out + b_out`` computes from
its own mixed heads: the same ops on the same operands, so the comparisons are bitwise.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from attnconv.layers.dense import BatchSharedDense, SharedDenseAttention, stack_heads
from attnconv.layers.projection import bias_grad, chunk_bounds, project_chunk
from attnconv.layers.separable import separable_attention
from attnconv.layers.separable_projected import projected_separable_attention

B, H, W, D, HEADS, O = 5, 4, 3, 6, 9, 7


def _inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(B, H, W, D, generator=g),
        "probs": torch.softmax(torch.randn(HEADS, H * W, H * W, generator=g), -1),
        "row": torch.softmax(torch.randn(HEADS, H, H, generator=g), -1),
        "col": torch.softmax(torch.randn(HEADS, W, W, generator=g), -1),
        "weight": torch.randn(O, HEADS * D, generator=g),
        "bias": torch.randn(O, generator=g),
    }


@pytest.mark.parametrize(("batch", "chunk"), [(1, 1), (5, 2), (5, 5), (5, 9), (7, 3)])
def test_chunk_bounds_cover_the_batch_in_order(batch: int, chunk: int) -> None:
    bounds = list(chunk_bounds(batch, chunk))
    assert bounds[0][0] == 0 and bounds[-1][1] == batch
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))  # contiguous, no overlap
    assert all(0 < stop - start <= chunk for start, stop in bounds)
    assert all(stop - start == chunk for start, stop in bounds[:-1])  # only the last is short


@pytest.mark.parametrize("with_bias", [True, False])
def test_project_chunk_is_the_linear_layer(with_bias: bool) -> None:
    t = _inputs()
    mixed = torch.randn(2, H, W, HEADS * D)
    bias = t["bias"] if with_bias else None
    out = torch.full((2, H, W, O), float("nan"))
    project_chunk(out, mixed, t["weight"], bias)
    flat = mixed.view(-1, HEADS * D)
    expected = (torch.addmm(bias, flat, t["weight"].t()) if with_bias
                else torch.mm(flat, t["weight"].t()))
    assert torch.equal(out.view(-1, O), expected)
    torch.testing.assert_close(out, torch.nn.functional.linear(mixed, t["weight"], bias))


@pytest.mark.parametrize("with_bias", [True, False])
def test_project_chunk_without_weight_adds_the_bias_only(with_bias: bool) -> None:
    t = _inputs()
    projected = torch.randn(W, H, 2, O).permute(2, 1, 0, 3)  # strided, as project-mix has it
    bias = t["bias"] if with_bias else None
    out = torch.full((2, H, W, O), float("nan"))
    project_chunk(out, projected, None, bias)
    assert torch.equal(out, projected + t["bias"] if with_bias else projected)


def test_bias_grad_sums_every_token() -> None:
    g = torch.randn(3, H, W, O, dtype=torch.float32)
    got = bias_grad(g, torch.float64, torch.float32)
    assert got.dtype == torch.float32
    assert torch.equal(got, g.double().sum((0, 1, 2)).float())


@pytest.mark.parametrize("with_bias", [True, False])
def test_dense_paths_project_their_mixed_heads(with_bias: bool) -> None:
    t = _inputs(1)
    x, acat, weight = t["x"], stack_heads(t["probs"]), t["weight"]
    bias = t["bias"] if with_bias else None
    n = H * W
    # SharedDenseAttention without dropout: m[b] = Acat x[b] as one batched product.
    m = torch.bmm(acat.expand(B, *acat.shape), x.view(B, n, D)).view(-1, HEADS * D)
    expected = torch.addmm(bias, m, weight.t()) if with_bias else torch.mm(m, weight.t())
    y = SharedDenseAttention.apply(x, acat, weight, bias, 0.0, B)
    assert torch.equal(y.view(-1, O), expected)
    # BatchSharedDense: m = Acat X with the images side by side, permuted to (b N, heads D).
    x_t = x.view(B, n, D).transpose(0, 1).reshape(n, B * D)
    m = (acat @ x_t).view(n, HEADS, B, D).permute(2, 0, 1, 3).reshape(-1, HEADS * D)
    expected = torch.addmm(bias, m, weight.t()) if with_bias else torch.mm(m, weight.t())
    y = BatchSharedDense.apply(x, acat, weight, bias, B, False)
    assert torch.equal(y.view(-1, O), expected)


@pytest.mark.parametrize("with_bias", [True, False])
def test_separable_mix_project_projects_its_mixed_heads(with_bias: bool) -> None:
    t = _inputs(2)
    bias = t["bias"] if with_bias else None
    args = (t["x"], t["row"], t["col"])
    mixed = separable_attention(*args, chunk=B, kernel="mix-project")  # (B, H, W, heads D)
    y = separable_attention(*args, t["weight"], bias, chunk=B, kernel="mix-project")
    flat = mixed.view(-1, HEADS * D)
    expected = (torch.addmm(bias, flat, t["weight"].t()) if with_bias
                else torch.mm(flat, t["weight"].t()))
    assert torch.equal(y.view(-1, O), expected)


def test_separable_project_mix_adds_the_bias_last() -> None:
    t = _inputs(3)
    args = (t["x"], t["row"], t["col"], t["weight"])
    for chunk in (2, B):
        without = projected_separable_attention(*args, None, chunk=chunk)
        with_bias = projected_separable_attention(*args, t["bias"], chunk=chunk)
        assert torch.equal(with_bias, without + t["bias"])
