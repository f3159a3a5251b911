"""Quadratic encodings: logits against the paper's formulas (Lemma 2 and the full covariance)."""

from __future__ import annotations

import itertools

import pytest
import torch

from attnconv.layers import QuadraticEncoding, QuadraticFullEncoding, SelfAttention2d


def _loop_logits(h: int, w: int, fn) -> torch.Tensor:
    out = torch.empty(h, w, h, w)
    for i, j, k, l in itertools.product(range(h), range(w), range(h), range(w)):
        out[i, j, k, l] = fn(torch.tensor([k - i, l - j], dtype=torch.float64))
    return out


def test_isotropic_hand_computed_values() -> None:
    enc = QuadraticEncoding(1)
    enc.set_gaussian_parameters(torch.tensor([[1.0, -1.0]]), 0.5)
    logits = enc.logits(3, 3)[0]  # (3, 3, 3, 3)
    # Query (1, 1), key (2, 0): delta = (1, -1) = Delta, so the logit is 0.
    assert logits[1, 1, 2, 0].item() == 0.0
    # Key (0, 0): delta = (-1, -1), ||delta - Delta||^2 = 4, logit = -0.5 * 4.
    assert logits[1, 1, 0, 0].item() == pytest.approx(-2.0)
    # Key (0, 2): delta = (-1, 1), ||(-2, 2)||^2 = 8.
    assert logits[1, 1, 0, 2].item() == pytest.approx(-4.0)


@pytest.mark.parametrize("size", [(3, 4), (5, 2), (1, 6)])
def test_isotropic_matches_formula_everywhere(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    enc = QuadraticEncoding(3)
    logits = enc.logits(*size)
    for h in range(3):
        centre, alpha = enc.centers[h].detach(), enc.alpha[h].detach()
        expected = _loop_logits(*size, lambda d, c=centre, a=alpha: -a * ((d - c) ** 2).sum())
        torch.testing.assert_close(logits[h].detach(), expected)


def test_isotropic_equals_lemma2_inner_product_up_to_constant() -> None:
    """Lemma 2: v^T r_delta with r = (||d||^2, d1, d2), v = -alpha (1, -2 D1, -2 D2)."""
    torch.manual_seed(1)
    enc = QuadraticEncoding(4)
    g = enc.gaussian_parameters()
    logits = enc.logits(4, 5).detach()
    for h in range(4):
        c, a = g.centers[h], g.alpha[h]
        v = -a * torch.stack([torch.tensor(1.0), -2 * c[0], -2 * c[1]])
        paper = _loop_logits(4, 5, lambda d, v=v: v @ torch.stack([d @ d, d[0], d[1]]))
        # The two differ by the per-head constant alpha ||Delta||^2 only.
        torch.testing.assert_close(paper, logits[h] + a * (c @ c))


def test_full_covariance_matches_formula() -> None:
    enc = QuadraticFullEncoding(2)
    s = torch.tensor([[[1.0, 0.0], [0.5, 2.0]], [[0.3, -0.2], [0.1, 0.7]]])
    centers = torch.tensor([[0.5, -1.0], [2.0, 1.0]])
    enc.set_gaussian_parameters(centers, s @ s.transpose(-1, -2))
    inv_cov = enc.inv_covariance.detach()
    torch.testing.assert_close(inv_cov, s @ s.transpose(-1, -2))
    logits = enc.logits(4, 3).detach()
    for h in range(2):
        expected = _loop_logits(
            4, 3, lambda d, h=h: -0.5 * (d - centers[h]) @ inv_cov[h] @ (d - centers[h]))
        torch.testing.assert_close(logits[h], expected)
    # Hand value: head 0, query (0, 0), key (1, 1): delta - Delta = (0.5, 2).
    m = inv_cov[0]
    e = torch.tensor([0.5, 2.0])
    assert logits[0, 0, 0, 1, 1].item() == pytest.approx(-0.5 * (e @ m @ e).item())


def test_full_covariance_equals_paper_five_dim_form_up_to_per_query_constant() -> None:
    """r = (d1, d2, d1^2, d2^2, d1 d2) (D_p = 5): same softmax as -1/2 (d-D)^T S^-1 (d-D)."""
    torch.manual_seed(2)
    enc = QuadraticFullEncoding(3)
    g = enc.gaussian_parameters()
    logits = enc.logits(5, 4).detach()
    for h in range(3):
        m, c = g.inv_covariance[h], g.centers[h]
        mc = m @ c
        v = torch.stack([mc[0], mc[1], -m[0, 0] / 2, -m[1, 1] / 2, -(m[0, 1] + m[1, 0]) / 2])
        paper = _loop_logits(
            5, 4, lambda d, v=v: v @ torch.stack([d[0], d[1], d[0] ** 2, d[1] ** 2, d[0] * d[1]]))
        diff = (paper - logits[h]).flatten(-2)  # (H, W, keys)
        # Constant over the keys of each query ...
        torch.testing.assert_close(diff, diff[..., :1].expand_as(diff))
        # ... so the attention probabilities are identical.
        torch.testing.assert_close(paper.flatten(-2).softmax(-1), logits[h].flatten(-2).softmax(-1))


def test_isotropic_is_full_covariance_with_scaled_identity() -> None:
    torch.manual_seed(3)
    iso = QuadraticEncoding(3)
    full = QuadraticFullEncoding(3)
    g = iso.gaussian_parameters()
    full.set_gaussian_parameters(g.centers, g.inv_covariance)
    torch.testing.assert_close(full.logits(4, 6), iso.logits(4, 6))


def test_alpha_is_positive_by_construction_and_initialisation() -> None:
    torch.manual_seed(4)
    enc = QuadraticEncoding(2000)
    assert (enc.alpha > 0).all()
    assert enc.alpha.mean().item() == pytest.approx(0.5, abs=0.01)
    assert enc.centers.std().item() == pytest.approx(2.0, rel=0.1)
    full = QuadraticFullEncoding(2000)
    assert (full.s - torch.eye(2)).std().item() == pytest.approx(0.01, rel=0.1)
    with pytest.raises(ValueError, match="alpha must be positive"):
        enc.set_gaussian_parameters(torch.zeros(2000, 2), -1.0)


@pytest.mark.parametrize("encoding", ["quadratic", "quadratic-full"])
def test_large_alpha_is_one_hot_on_query_plus_delta(encoding: str) -> None:
    """Lemma 2: as alpha grows the softmax is one-hot on q + Delta."""
    layer = SelfAttention2d(4, 4, encoding=encoding)
    centers = torch.tensor([[0.0, 0.0], [1.0, -1.0], [-2.0, 1.0], [0.0, 2.0]])
    if encoding == "quadratic":
        layer.encoding.set_gaussian_parameters(centers, 1e3)
    else:
        layer.encoding.set_gaussian_parameters(centers, 2e3 * torch.eye(2).expand(4, 2, 2))
    _, attn = layer(torch.randn(1, 7, 8, 4), return_attention=True)
    for h, (dr, dc) in enumerate(centers.long().tolist()):
        for i, j in [(3, 3), (2, 4), (4, 5)]:
            target = torch.zeros(7, 8)
            target[i + dr, j + dc] = 1.0
            torch.testing.assert_close(attn[0, h, i, j], target, atol=1e-12, rtol=0)


def test_gaussian_parameters_in_paper_units() -> None:
    layer = SelfAttention2d(8, 2)
    layer.encoding.set_gaussian_parameters(torch.tensor([[1.0, 2.0], [-3.0, 0.5]]),
                                           torch.tensor([0.25, 4.0]))
    g = layer.gaussian_parameters()
    torch.testing.assert_close(g.centers, torch.tensor([[1.0, 2.0], [-3.0, 0.5]]))
    torch.testing.assert_close(g.alpha, torch.tensor([0.25, 4.0]))
    torch.testing.assert_close(g.inv_covariance[1], 8.0 * torch.eye(2))
    with pytest.raises(TypeError, match="quadratic"):
        SelfAttention2d(8, 2, encoding="learned", max_size=4).gaussian_parameters()
