"""Learned relative row/column encodings against their formulas."""

from __future__ import annotations

import itertools

import pytest
import torch

from attnconv.layers import LearnedRelativeEncoding, SelfAttention2d


def test_positional_only_matches_formula() -> None:
    torch.manual_seed(0)
    enc = LearnedRelativeEncoding(2, 5, max_size=(4, 6))
    logits = enc.logits(3, 5).detach()  # (heads, H, W, H, W)
    rows, cols = enc.row_embeddings.detach(), enc.col_embeddings.detach()
    for h, i, j, k, l in itertools.product(range(2), range(3), range(5), range(3), range(5)):
        expected = (enc.row_score[h] @ rows[k - i + 3] + enc.col_score[h] @ cols[l - j + 5])
        assert logits[h, i, j, k, l].item() == pytest.approx(expected.item(), abs=1e-12)


def test_hand_computed_table_lookup() -> None:
    enc = LearnedRelativeEncoding(1, 1, max_size=2)
    with torch.no_grad():
        enc.row_embeddings.copy_(torch.tensor([[10.0], [20.0], [30.0]]))  # shifts -1, 0, +1
        enc.col_embeddings.copy_(torch.tensor([[1.0], [2.0], [3.0]]))
        enc.row_score.fill_(1.0)
        enc.col_score.fill_(1.0)
    logits = enc.logits(2, 2)[0]
    assert logits[0, 0, 1, 0].item() == 30.0 + 2.0  # delta = (+1, 0)
    assert logits[1, 1, 0, 0].item() == 10.0 + 1.0  # delta = (-1, -1)
    assert logits[0, 1, 0, 1].item() == 20.0 + 2.0  # delta = (0, 0)


def test_query_dependent_matches_formula() -> None:
    torch.manual_seed(1)
    enc = LearnedRelativeEncoding(2, 3, max_size=5, query_dependent=True)
    q = torch.randn(2, 2, 3, 4, 6)  # (B, heads, H, W, 2 * dim)
    logits = enc.logits(3, 4, query=q).detach()
    rows, cols = enc.row_embeddings.detach(), enc.col_embeddings.detach()
    for b, h, i, j, k, l in itertools.product(range(2), range(2), range(3), range(4), range(3),
                                              range(4)):
        expected = q[b, h, i, j, :3] @ rows[k - i + 4] + q[b, h, i, j, 3:] @ cols[l - j + 4]
        assert logits[b, h, i, j, k, l].item() == pytest.approx(expected.item(), abs=1e-12)


def test_too_large_image_names_the_limit_and_parameter() -> None:
    layer = SelfAttention2d(8, 2, encoding="learned", max_size=4)
    layer(torch.randn(1, 4, 4, 8))  # at the limit: fine
    with pytest.raises(ValueError, match=r"max_size=4x4.*max_size >= 5"):
        layer(torch.randn(1, 5, 3, 8))
    rect = SelfAttention2d(8, 2, encoding="learned", content=True, qk_dim=4, max_size=(2, 9))
    rect(torch.randn(1, 2, 9, 8))
    with pytest.raises(ValueError, match="max_size"):
        rect(torch.randn(1, 3, 9, 8))


def test_content_needs_even_query_width() -> None:
    with pytest.raises(ValueError, match="qk_dim must be even"):
        SelfAttention2d(8, 2, encoding="learned", content=True, qk_dim=5)
