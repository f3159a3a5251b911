"""Degenerate-head pruning: verdicts, exact head removal, pruned checkpoints rebuild."""

from __future__ import annotations

import pytest
import torch

from attnconv.layers import SelfAttention2d
from attnconv.models import create_model
from attnconv.prune import head_verdicts, prune_model, select_heads


@pytest.mark.parametrize("cfg", [dict(encoding="quadratic"), dict(encoding="quadratic-full"),
                                 dict(encoding="learned", content=True, qk_dim=4, max_size=6),
                                 dict(encoding="quadratic", head_dim=3, value_proj=True)])
def test_removing_heads_equals_zeroing_their_output_blocks(cfg: dict) -> None:
    torch.manual_seed(0)
    layer = SelfAttention2d(6, 4, **cfg).double().eval()
    x = torch.randn(2, 5, 6, 6, dtype=torch.float64)
    keep = [0, 2]
    pruned = select_heads(layer, keep)
    assert pruned.heads == 2
    reference = select_heads(layer, [0, 1, 2, 3])
    with torch.no_grad():
        w = reference.out.weight.view(6, 4, layer.head_dim)
        w[:, [1, 3]] = 0.0  # heads 1 and 3 contribute nothing
    torch.testing.assert_close(pruned(x), reference(x), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="keep at least one"):
        select_heads(layer, [])


def test_verdicts_flag_wide_and_degenerate_heads() -> None:
    model = create_model("sa-quadratic-full", in_chans=1, image_size=8, hidden_size=8,
                         num_layers=2, heads=3, ffn_size=8)
    enc = model.attention_layers()[0].encoding
    centers = torch.zeros(3, 2)
    enc.set_gaussian_parameters(centers, torch.stack([torch.eye(2), 1e-4 * torch.eye(2),
                                                      torch.diag(torch.tensor([1.0, 1e-6]))]))
    verdicts = head_verdicts(model, min_precision=1e-2, max_condition=1e3)
    first = [v for v in verdicts if v.layer == 0]
    assert [v.keep for v in first] == [True, False, False]
    assert "too wide" in first[1].reason and "condition" in first[2].reason
    pruned = prune_model(model, verdicts)
    assert [a.heads for a in pruned.attention_layers()] == [1, 3]
    assert pruned.config.heads == [1, 3]
    rebuilt = create_model("sa-quadratic-full", in_chans=1, image_size=8, hidden_size=8,
                           num_layers=2, heads=[1, 3], ffn_size=8)
    rebuilt.load_state_dict(pruned.state_dict())  # the checkpoint of a pruned model rebuilds
    x = torch.randn(2, 1, 8, 8)
    model.eval(), pruned.eval(), rebuilt.eval()
    torch.testing.assert_close(rebuilt(x), pruned(x))
    with pytest.raises(TypeError, match="quadratic"):
        head_verdicts(create_model("sa-learned", in_chans=1, image_size=8, hidden_size=8,
                                   num_layers=1, heads=2, ffn_size=8))
