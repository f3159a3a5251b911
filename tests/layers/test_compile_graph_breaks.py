"""Quadratic positional-only layers trace into one graph under torch.compile, with eager's values.

Dynamo only (``backend="eager"``): no inductor compilation, so these stay fast. The algorithm
choice is what could break the graph (:attr:`QuadraticFullEncoding.separable` reads ``S``), so
the cases cover a random and an exactly diagonal ``Sigma^-1``, with and without gradients.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from attnconv.layers import SelfAttention2d

CASES = [  # (encoding, diagonal Sigma^-1, grad enabled)
    ("quadratic", False, False),
    ("quadratic", False, True),
    ("quadratic-full", False, False),
    ("quadratic-full", False, True),
    ("quadratic-full", True, False),
]


@pytest.fixture(autouse=True)
def fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _layer(encoding: str, diagonal: bool) -> SelfAttention2d:
    torch.manual_seed(0)
    layer = SelfAttention2d(8, 4, encoding=encoding).eval()
    if diagonal:
        centers = torch.randn(4, 2)
        inv_cov = torch.diag_embed(torch.rand(4, 2) + 0.5)  # (heads, 2, 2), exactly diagonal
        layer.encoding.set_gaussian_parameters(centers, inv_cov)
    return layer


@pytest.mark.parametrize(("encoding", "diagonal", "grad"), CASES)
def test_forward_has_no_graph_break_and_equals_eager(encoding: str, diagonal: bool,
                                                     grad: bool) -> None:
    layer = _layer(encoding, diagonal)
    x = torch.randn(2, 5, 6, 8)
    with torch.set_grad_enabled(grad):
        if diagonal:  # eager takes the separable path here: the case the graph could break on
            assert layer.algorithm(30) == "separable"
        eager = layer(x)
        explained = torch._dynamo.explain(layer)(x)
        assert explained.graph_break_count == 0, [str(r.reason) for r in explained.break_reasons]
        assert explained.graph_count == 1
        compiled = torch.compile(layer, backend="eager", fullgraph=True)(x)
    torch.testing.assert_close(compiled, eager)
