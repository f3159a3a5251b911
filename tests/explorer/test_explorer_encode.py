"""Map storage of the explorer page: quantisation error, top-k, the size planner."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnconv.analysis.explorer import (
    MapGroup,
    dequantise,
    estimate_page,
    plan_storage,
    quantise,
)
from attnconv.analysis.explorer.encode import b64_len, error_bound, page_bytes, row_bytes
from attnconv.models import create_model


def _probs(*shape: int, seed: int = 0, sharp: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (sharp * torch.randn(*shape, generator=g)).softmax(dim=-1)


def test_dense_roundtrip_within_half_a_step() -> None:
    p = _probs(3, 5, 49)  # (heads, queries, keys)
    enc = quantise(p, None)
    assert enc.format == "dense" and enc.values.dtype == np.uint8 and enc.values.shape == (3, 5, 49)
    assert enc.scales.dtype == np.float32 and enc.nbytes == 3 * 5 * (49 + 4)
    back = dequantise(enc)
    err = np.abs(back - p.double().numpy())
    assert np.all(err <= error_bound(enc)[..., None] + 1e-9)
    assert np.allclose(back.max(axis=-1), p.amax(dim=-1).numpy(), rtol=1e-7)  # max is exact


def test_topk_keeps_the_largest_keys() -> None:
    p = _probs(2, 4, 300, sharp=4.0)  # 300 keys: uint16 indices
    enc = quantise(p, 7)
    assert enc.format == "topk" and enc.indices is not None and enc.indices.dtype == "<u2"
    assert enc.values.shape == (2, 4, 7) and enc.nbytes == 2 * 4 * row_bytes(300, 7)
    back = dequantise(enc)
    top = p.topk(7, dim=-1)
    expected = torch.zeros_like(p).scatter(-1, top.indices, top.values).double().numpy()
    assert np.all(np.abs(back - expected) <= error_bound(enc)[..., None] + 1e-9)
    assert np.count_nonzero(back, axis=-1).max() <= 7
    assert enc.mass_kept is not None
    assert np.allclose(enc.mass_kept, top.values.sum(-1).numpy(), atol=1e-6)
    assert quantise(p, 300).format == "dense"  # k covering every key is dense
    assert quantise(_probs(1, 2, 10), 3).indices.dtype == np.uint8  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="k must be"):
        quantise(p, 0)


def test_planner_chooses_dense_then_the_largest_k_that_fits() -> None:
    groups = [MapGroup(4, 49, 49, shared=False), MapGroup(4, 49, 49, shared=True)]
    dense = page_bytes(groups, 10, 784, None, 1000)
    assert dense == 1000 + b64_len(7840) + b64_len(4 * 49 * 49) + b64_len(4 * 49 * 4) + 10 * (
        b64_len(4 * 49 * 49) + b64_len(4 * 49 * 4) + 8)
    assert plan_storage(groups, 10, 784, max_bytes=None, fixed_bytes=1000).k is None
    assert plan_storage(groups, 10, 784, max_bytes=dense, fixed_bytes=1000).k is None
    plan = plan_storage(groups, 10, 784, max_bytes=dense // 2, fixed_bytes=1000)
    assert plan.k is not None and 1 <= plan.k < 49
    assert plan.estimated_bytes <= dense // 2 < page_bytes(groups, 10, 784, plan.k + 1, 1000)
    assert plan.dense_bytes == dense
    with pytest.raises(ValueError, match="even keeping one key"):
        plan_storage(groups, 10, 784, max_bytes=20_000, fixed_bytes=1000)
    shared_only = [MapGroup(4, 49, 49, shared=True)]  # nothing per image: always dense
    assert plan_storage(shared_only, 10, 784, max_bytes=1, fixed_bytes=0).k is None


@pytest.mark.parametrize(("name", "dense"), [("sa-quadratic", True), ("sa-learned", True),
                                             ("sa-learned-content", False)])
def test_paper_size_pages_fit_20_mb(name: str, dense: bool) -> None:
    """20 CIFAR images, 6 layers of 9 heads on 16x16 tokens: under 20 MB."""
    with torch.device("meta"):
        model = create_model(name, num_classes=10, in_chans=3, image_size=32)
    plan = estimate_page(model, 20, (3, 32, 32))
    assert plan.estimated_bytes < 20e6
    maps = 6 * 9 * 256 * (256 + 4)  # positional-only: one dense map per layer, shared
    if dense:  # ~4.9 MB: the maps once, base64, and the images
        assert plan.k is None and maps * 4 / 3 < plan.estimated_bytes < maps * 4 / 3 + 0.2e6
    else:  # dense would be ~192 MB (2 views x 20 images); keeps the top 11 of 256 keys
        assert plan.dense_bytes > 2 * 20 * maps * 4 / 3
        assert plan.k == 11
