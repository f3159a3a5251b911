"""The "project, then mix" separable kernel against the reference and the other kernel.

Float64 (``conftest.py``). The kernel must compute exactly what the layer's reference computes,
outputs and every gradient, for every chunk size and for every subset of inputs needing a
gradient; and the automatic choice must be the one documented (``choose_kernel``).
"""

from __future__ import annotations

import itertools

import pytest
import torch

from attnconv.layers import SelfAttention2d
from attnconv.layers.separable import KERNELS, choose_kernel, separable_attention
from attnconv.layers.separable_projected import (
    MAX_DIM,
    ProjectedSeparableAttention,
    projected_chunk,
)


def _inputs(batch: int, height: int, width: int, dim: int, heads: int, out_dim: int,
            seed: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, height, width, dim, generator=gen)
    row = torch.randn(heads, height, height, generator=gen).softmax(-1)
    col = torch.randn(heads, width, width, generator=gen).softmax(-1)
    weight = torch.randn(out_dim, heads * dim, generator=gen)
    bias = torch.randn(out_dim, generator=gen)
    return x, row, col, weight, bias


def _einsum_reference(x: torch.Tensor, row: torch.Tensor, col: torch.Tensor,
                      weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The formula written out: y = b + sum_h (R_h (x) C_h) x W_h (MHSA with identity values)."""
    heads, dim = row.shape[0], x.shape[-1]
    w_h = weight.view(weight.shape[0], heads, dim)  # (O, h, D)
    y = torch.einsum("hik,hjl,bkld,ohd->bijo", row, col, x, w_h)
    return y if bias is None else y + bias


@pytest.mark.parametrize(("shape", "chunk"), [((3, 5, 7, 4, 3, 6), 1), ((3, 5, 7, 4, 3, 6), 2),
                                              ((4, 1, 1, 2, 2, 3), 3), ((2, 9, 2, 3, 1, 5), 8),
                                              ((5, 4, 4, 2, 9, 2), None)])
def test_projected_kernel_outputs_and_gradients(shape: tuple[int, ...],
                                                chunk: int | None) -> None:
    batch, height, width, _, _, out_dim = shape
    inputs = [t.requires_grad_() for t in _inputs(*shape, seed=sum(shape))]
    upstream = torch.randn(batch, height, width, out_dim)
    fast = separable_attention(*inputs, chunk=chunk, kernel="project-mix")
    ref = _einsum_reference(*inputs)
    torch.testing.assert_close(fast, ref, atol=1e-12, rtol=1e-10)
    g_fast = torch.autograd.grad(fast, inputs, upstream)
    g_ref = torch.autograd.grad(ref, inputs, upstream)
    for a, b in zip(g_fast, g_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=1e-9)
    # and the two kernels agree with each other
    other = separable_attention(*inputs, chunk=chunk, kernel="mix-project")
    torch.testing.assert_close(fast, other, atol=1e-12, rtol=1e-10)


def test_projected_kernel_gradcheck_without_bias() -> None:
    x, row, col, weight, _ = _inputs(2, 3, 4, 2, 2, 3, seed=5)
    args = [t.requires_grad_() for t in (x, row, col, weight)]
    assert torch.autograd.gradcheck(
        lambda *t: ProjectedSeparableAttention.apply(*t, None, 1), args)


def test_projected_kernel_each_subset_of_gradients() -> None:
    """Only the requested gradients are computed, and each equals the full computation's."""
    base = _inputs(3, 4, 5, 3, 2, 4, seed=7)
    upstream = torch.randn(3, 4, 5, 4)
    full = [t.clone().requires_grad_() for t in base]
    expected = torch.autograd.grad(_einsum_reference(*full), full, upstream)
    for mask in itertools.product([False, True], repeat=5):
        if not any(mask):
            continue
        args = [t.clone().requires_grad_(m) for t, m in zip(base, mask, strict=True)]
        y = separable_attention(*args, chunk=2, kernel="project-mix")
        wanted = [a for a, m in zip(args, mask, strict=True) if m]
        got = torch.autograd.grad(y, wanted, upstream)
        exp = [e for e, m in zip(expected, mask, strict=True) if m]
        for a, b in zip(got, exp, strict=True):
            torch.testing.assert_close(a, b, atol=1e-11, rtol=1e-9)


def test_layer_runs_projected_kernel_and_matches_reference() -> None:
    """The demo model's layer shape (narrow tokens) takes the new kernel; equal to reference."""
    torch.manual_seed(3)
    layer = SelfAttention2d(8, 3, encoding="quadratic")
    with torch.no_grad():
        for p in layer.encoding.parameters():  # move the heads off the query pixel
            p.add_(torch.randn_like(p) * 0.5)
    x = torch.randn(6, 5, 7, 8, requires_grad=True)
    row, _ = layer._axis_probabilities(5, 7)
    assert layer.algorithm(35) == "separable"
    assert choose_kernel(x, row, layer.out.weight) == "project-mix"
    params = [x, *[p for p in layer.parameters() if p.requires_grad]]
    y = layer(x)
    grads = torch.autograd.grad(y.square().sum(), params)
    layer.impl = "reference"
    y_ref = layer(x)
    grads_ref = torch.autograd.grad(y_ref.square().sum(), params)
    torch.testing.assert_close(y, y_ref, atol=1e-12, rtol=1e-10)
    for a, b in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=1e-9)


def test_kernel_choice_and_errors() -> None:
    narrow = torch.zeros(1, 2, 2, MAX_DIM)
    wide = torch.zeros(1, 2, 2, MAX_DIM + 1)
    row, weight = torch.zeros(3, 2, 2), torch.zeros(4, 3 * MAX_DIM)
    assert choose_kernel(narrow, row, weight) == "project-mix"
    assert choose_kernel(wide, row, torch.zeros(4, 3 * (MAX_DIM + 1))) == "mix-project"
    assert choose_kernel(narrow, row, None) == "mix-project"  # no fused projection
    assert choose_kernel(narrow, row.expand(1, 3, 2, 2), weight) == "mix-project"  # per image
    assert set(KERNELS) == {"auto", "mix-project", "project-mix"}
    x, r, c, w, b = _inputs(2, 3, 3, 2, 2, 2, seed=1)
    with pytest.raises(ValueError, match="unknown kernel 'fast'"):
        separable_attention(x, r, c, w, b, kernel="fast")
    with pytest.raises(ValueError, match="batch-shared"):
        separable_attention(x, r, c, kernel="project-mix")
    with pytest.raises(ValueError, match="batch-shared"):
        separable_attention(x, r.expand(2, 2, 3, 3), c, w, b, kernel="project-mix")


def test_projected_chunk_plan() -> None:
    x = torch.zeros(50, 14, 14, 32, dtype=torch.float32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert projected_chunk(x, 9, 32) == 4  # 1 MiB / (196 * 9 * 32 * 4 bytes)
        assert projected_chunk(torch.zeros(2, 16, 16, 400), 9, 400) == 1
    finally:
        torch.set_num_threads(threads)
