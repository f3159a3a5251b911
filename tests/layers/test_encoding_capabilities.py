"""Encodings declare what they can do; the layer's algorithm follows from the declarations.

Also the one mechanism that forces an algorithm (``impl``, :func:`attention_impl`,
:func:`reference_attention`) and the output projection shared by the dense and separable paths.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from attnconv.layers import RelativeEncoding, SelfAttention2d, attention_impl, reference_attention
from attnconv.layers.grid import axis_offsets, relative_grid


class _LogitsOnly(RelativeEncoding):
    """A new encoding with only :meth:`logits`: a per-head L1 (Laplace) bump around the query."""

    def __init__(self, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = torch.nn.Parameter(torch.linspace(0.5, 1.5, heads))

    def logits(self, height: int, width: int, query: Tensor | None = None) -> Tensor:
        d_row, d_col = relative_grid(height, width, device=self.scale.device,
                                     dtype=self.scale.dtype)
        return -self.scale.view(-1, 1, 1, 1, 1) * (d_row.abs() + d_col.abs())


class _Separable(_LogitsOnly):
    """The same bump declared separable: ``|delta_1| + |delta_2|`` is a row plus a column term."""

    @property
    def separable(self) -> bool:
        return True

    def axis_logits(self, height: int, width: int) -> tuple[Tensor, Tensor]:
        rows = axis_offsets(height, device=self.scale.device).to(self.scale.dtype)
        cols = axis_offsets(width, device=self.scale.device).to(self.scale.dtype)
        s = self.scale.view(-1, 1, 1)
        return -s * rows.abs(), -s * cols.abs()  # (heads, H, H), (heads, W, W)


class _Factored(_Separable):
    """Declared factored as well: :meth:`query_key_factors` is the base class's broadcast."""

    factored = True


def _layer_with(encoding: RelativeEncoding, *, content: bool = False) -> SelfAttention2d:
    torch.manual_seed(3)
    layer = SelfAttention2d(4, 3, encoding="quadratic", content=content)
    layer.encoding = encoding
    return layer


@pytest.mark.parametrize(("encoding", "content", "train_alg", "infer_alg"), [
    (_LogitsOnly, False, "dense", "dense"),
    (_LogitsOnly, True, "reference", "reference"),  # not factored: no fused path
    (_Separable, False, "separable", "separable"),
    (_Separable, True, "reference", "reference"),
    (_Factored, True, "reference", "fused"),  # CPU training: the reference is faster
])
def test_a_new_encoding_gets_the_algorithms_its_declarations_allow(
        encoding: type[RelativeEncoding], content: bool, train_alg: str, infer_alg: str) -> None:
    layer = _layer_with(encoding(3), content=content)
    x = torch.randn(2, 5, 6, 4, requires_grad=True)
    assert layer.algorithm() == train_alg
    with torch.no_grad():
        assert layer.algorithm() == infer_alg
        y_fast = layer(x)
        y_ref = layer.forward_reference(x)
    torch.testing.assert_close(y_fast, y_ref, atol=1e-12, rtol=1e-10)
    y = layer(x)  # training: outputs and gradients of the chosen path against the reference
    y_ref = layer.forward_reference(x)
    grads = torch.autograd.grad(y.square().sum(), [x, *layer.parameters()], allow_unused=True)
    grads_ref = torch.autograd.grad(y_ref.square().sum(), [x, *layer.parameters()],
                                    allow_unused=True)
    torch.testing.assert_close(y, y_ref, atol=1e-12, rtol=1e-10)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        assert (g is None) == (g_ref is None)
        if g is not None:
            torch.testing.assert_close(g, g_ref, atol=1e-10, rtol=1e-8)


def test_the_base_class_declares_nothing() -> None:
    enc = _LogitsOnly(2)
    assert not enc.separable and not enc.factored and not enc.query_dependent
    with pytest.raises(NotImplementedError, match="no separable form"):
        enc.axis_logits(3, 3)
    with pytest.raises(NotImplementedError, match="no query-dependent"):
        enc.query_axis_logits(torch.zeros(1, 3, 3, 2, 4))


def test_declared_factors_reproduce_the_logits() -> None:
    enc = _Factored(2)
    row, col, cross = enc.query_key_factors(4, 5)
    assert cross is None
    logits = row[..., :, None] + col[..., None, :]  # (heads, H, W, H, W)
    torch.testing.assert_close(logits, enc.logits(4, 5), atol=1e-12, rtol=0)


def test_paper_encodings_declare_their_capabilities() -> None:
    torch.manual_seed(0)
    quad = SelfAttention2d(4, 2, encoding="quadratic").encoding
    full = SelfAttention2d(4, 2, encoding="quadratic-full").encoding
    learned = SelfAttention2d(4, 2, encoding="learned", max_size=5).encoding
    qdep = SelfAttention2d(4, 2, encoding="learned", content=True, max_size=5).encoding
    assert quad is not None and full is not None and learned is not None and qdep is not None
    assert quad.separable and quad.factored and not quad.query_dependent
    assert learned.separable and learned.factored and not learned.query_dependent
    assert not qdep.separable and qdep.factored and qdep.query_dependent
    assert full.factored and not full.separable  # S = I + noise: not diagonal
    with torch.no_grad():
        full.get_parameter("s").copy_(torch.diag_embed(torch.tensor([[1.0, 2.0], [3.0, 0.5]])))
        assert full.separable  # diagonal, no gradient needed
    assert not full.separable  # diagonal, but S needs a gradient
    q = torch.randn(2, 4, 5, 2, 4)  # (B, H, W, heads, qk_dim = 2 x table width)
    row, col = qdep.query_axis_logits(q)
    full_logits = qdep.logits(4, 5, query=q.permute(0, 3, 1, 2, 4))
    torch.testing.assert_close(row[..., :, None] + col[..., None, :], full_logits,
                               atol=1e-12, rtol=0)


def test_attention_impl_overrides_every_layer_and_nests() -> None:
    torch.manual_seed(1)
    dense = SelfAttention2d(4, 2, encoding="quadratic-full")
    sep = SelfAttention2d(4, 2, encoding="quadratic", impl="reference")
    assert (dense.algorithm(), sep.algorithm()) == ("dense", "reference")
    with attention_impl("auto"):
        assert (dense.algorithm(), sep.algorithm()) == ("dense", "separable")
        with attention_impl("dense"):
            assert (dense.algorithm(), sep.algorithm()) == ("dense", "dense")
            with attention_impl(None):  # every layer its own impl again
                assert (dense.algorithm(), sep.algorithm()) == ("dense", "reference")
        with reference_attention():
            assert (dense.algorithm(), sep.algorithm()) == ("reference", "reference")
            with reference_attention(False):
                assert (dense.algorithm(), sep.algorithm()) == ("dense", "reference")
        with attention_impl("separable"), pytest.raises(ValueError, match="impl='separable'"):
            dense.algorithm()  # not exact for a full covariance: refused as impl= is
        assert (dense.algorithm(), sep.algorithm()) == ("dense", "separable")
    assert (dense.algorithm(), sep.algorithm()) == ("dense", "reference")
    assert dense.impl == "auto" and sep.impl == "reference"  # the layers are untouched
    with pytest.raises(ValueError, match="unknown impl 'fast'"), attention_impl("fast"):
        pass


@pytest.mark.parametrize("encoding", ["quadratic", "quadratic-full"])
def test_output_projection_as_a_module_or_folded_agree(encoding: str) -> None:
    """The shared projection step: a hooked ``out`` runs as a module, same result as folded."""
    torch.manual_seed(16)
    layer = SelfAttention2d(4, 2, encoding=encoding)
    x = torch.randn(2, 5, 5, 4, requires_grad=True)
    expected = {"quadratic": "separable", "quadratic-full": "dense"}[encoding]
    with torch.no_grad():
        assert layer.algorithm() == expected
    y_folded = layer(x)
    g_folded = torch.autograd.grad(y_folded.sum(), [x, layer.out.weight, layer.out.bias])
    seen = []
    handle = layer.out.register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    try:
        y_module = layer(x)
        g_module = torch.autograd.grad(y_module.sum(), [x, layer.out.weight, layer.out.bias])
    finally:
        handle.remove()
    assert seen == [torch.Size([2, 5, 5, 8])]  # the mixed heads went through self.out
    torch.testing.assert_close(y_module, y_folded, atol=1e-12, rtol=1e-10)
    for a, b in zip(g_module, g_folded, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)
