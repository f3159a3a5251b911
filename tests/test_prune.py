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


def test_prune_command_writes_a_resumable_run_and_fine_tunes(tmp_path) -> None:
    import json

    from attnconv.cli import main
    from attnconv.train import load_checkpoint, save_checkpoint, train
    from attnconv.train.config import config_from_dict

    cfg = config_from_dict({"model": "sa-quadratic-full", "dataset": "embedded",
                            "train_subset": 100, "val_fraction": 0.02, "batch_size": 50,
                            "epochs": 1, "threads": 1, "out_dir": str(tmp_path), "name": "full",
                            "model_args": {"hidden_size": 8, "num_layers": 2, "heads": 3,
                                           "ffn_size": 8, "attn_dropout": 0.0}})
    train(cfg, log=lambda _m: None)
    # Make head 0 of layer 0 singular (Sigma^-1 = diag(1, 1e-8)): the only degenerate head.
    best = tmp_path / "full" / "checkpoints" / "best.safetensors"
    ckpt = load_checkpoint(best)
    s = ckpt.tensors["model.layers.0.attn.encoding.s"].clone()
    s[0] = torch.diag(torch.tensor([1.0, 1e-4]))
    for h in range(1, 3):
        s[h] = torch.eye(2)
    ckpt.tensors["model.layers.0.attn.encoding.s"] = s
    ckpt.tensors["model.layers.1.attn.encoding.s"] = torch.eye(2).repeat(3, 1, 1)
    meta = {k: v for k, v in ckpt.meta.items() if k not in ("format", "sha256")}
    save_checkpoint(best, ckpt.tensors, meta)
    dry = tmp_path / "dry"
    assert main(["prune", str(tmp_path / "full"), "--out", str(dry), "--dry-run"]) == 0
    assert not dry.exists()
    out = tmp_path / "pruned"
    assert main(["prune", str(tmp_path / "full"), "--out", str(out), "--finetune-epochs", "1"]) == 0
    verdicts = json.loads((out / "pruning.json").read_text())
    assert [(v["layer"], v["head"]) for v in verdicts if not v["keep"]] == [(0, 0)]
    last = load_checkpoint(out / "checkpoints" / "last.safetensors")
    assert last.meta["model_args"]["heads"] == [2, 3]
    assert json.loads((out / "results.json").read_text())["epochs"] == 1
    assert main(["prune", str(tmp_path / "full"), "--out", str(out)]) == 1  # never overwrites
