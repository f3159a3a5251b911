"""Degenerate-head pruning: verdicts, exact head removal, pruned checkpoints rebuild."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from attnconv.errors import ConfigError
from attnconv.layers import SelfAttention2d
from attnconv.models import create_model
from attnconv.prune import (
    MAX_CONDITION,
    MIN_EIGENVALUE,
    check_thresholds,
    head_verdicts,
    prune_model,
    select_heads,
)


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
    verdicts = head_verdicts(model, min_eigenvalue=1e-2, max_condition=1e3)
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


@pytest.fixture(scope="module")
def degenerate_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained tiny sa-quadratic-full run whose only degenerate head is layer 0, head 0.

    Its ``Sigma^-1`` is ``diag(1, 1e-8)`` (condition number 1e8); every other head has
    ``Sigma^-1 = I``.
    """
    from attnconv.train import load_checkpoint, save_checkpoint, train
    from attnconv.train.config import config_from_dict

    root = tmp_path_factory.mktemp("prune")
    cfg = config_from_dict({"model": "sa-quadratic-full", "dataset": "embedded",
                            "train_subset": 100, "val_fraction": 0.02, "batch_size": 50,
                            "epochs": 1, "threads": 1, "out_dir": str(root), "name": "full",
                            "model_args": {"hidden_size": 8, "num_layers": 2, "heads": 3,
                                           "ffn_size": 8, "attn_dropout": 0.0}})
    train(cfg, log=lambda _m: None)
    best = root / "full" / "checkpoints" / "best.safetensors"
    ckpt = load_checkpoint(best)
    s = ckpt.tensors["model.layers.0.attn.encoding.s"].clone()
    s[0] = torch.diag(torch.tensor([1.0, 1e-4]))
    for h in range(1, 3):
        s[h] = torch.eye(2)
    ckpt.tensors["model.layers.0.attn.encoding.s"] = s
    ckpt.tensors["model.layers.1.attn.encoding.s"] = torch.eye(2).repeat(3, 1, 1)
    meta = {k: v for k, v in ckpt.meta.items() if k not in ("format", "sha256")}
    save_checkpoint(best, ckpt.tensors, meta)
    return root / "full"


def test_prune_command_writes_a_resumable_run_and_fine_tunes(degenerate_run: Path,
                                                              tmp_path: Path) -> None:
    from attnconv.cli import main
    from attnconv.train import load_checkpoint

    dry = tmp_path / "dry"
    assert main(["prune", str(degenerate_run), "--out", str(dry), "--dry-run"]) == 0
    assert not dry.exists()
    out = tmp_path / "pruned"
    assert main(["prune", str(degenerate_run), "--out", str(out), "--finetune-epochs", "1"]) == 0
    verdicts = json.loads((out / "pruning.json").read_text())
    assert [(v["layer"], v["head"]) for v in verdicts if not v["keep"]] == [(0, 0)]
    last = load_checkpoint(out / "checkpoints" / "last.safetensors")
    assert last.meta["model_args"]["heads"] == [2, 3]
    assert json.loads((out / "results.json").read_text())["epochs"] == 1
    assert main(["prune", str(degenerate_run), "--out", str(out)]) == 1  # never overwrites


# --- The authors' thresholds (epfml/attention-cnn train.py: find_degenerated_heads) -----------

def _full_model_with(inv_covariances: list[torch.Tensor]) -> torch.nn.Module:
    """A 1-layer sa-quadratic-full model whose heads have the given ``Sigma^-1``."""
    model = create_model("sa-quadratic-full", in_chans=1, image_size=8, hidden_size=8,
                         num_layers=1, heads=len(inv_covariances), ffn_size=8)
    enc = model.attention_layers()[0].encoding
    enc.set_gaussian_parameters(torch.zeros(len(inv_covariances), 2),
                                torch.stack(inv_covariances))
    return model


def test_default_thresholds_are_the_authors() -> None:
    assert MIN_EIGENVALUE == 1e-5
    assert MAX_CONDITION == 1e3
    eye = torch.eye(2)
    model = _full_model_with([4.9e-3 * eye, 1e-6 * eye, torch.diag(torch.tensor([1.0, 2e-3])),
                              torch.diag(torch.tensor([1.0, 5e-4]))])
    verdicts = head_verdicts(model)
    assert [v.keep for v in verdicts] == [True, False, True, False]
    assert verdicts[0].eig_max == pytest.approx(4.9e-3, rel=1e-5)  # wide, but not uniform
    assert verdicts[1].reason.startswith("too wide") and "1e-05" in verdicts[1].reason
    assert verdicts[3].reason.startswith("degenerate") and "1000" in verdicts[3].reason


def test_isotropic_heads_use_the_same_largest_eigenvalue() -> None:
    model = create_model("sa-quadratic", in_chans=1, image_size=8, hidden_size=8,
                         num_layers=1, heads=2, ffn_size=8)
    layer = model.attention_layers()[0]
    alpha = layer.gaussian_parameters().alpha
    assert alpha is not None
    # Sigma^-1 = 2 alpha I: alpha = 2.45e-3 -> 4.9e-3 (kept), alpha = 5e-7 -> 1e-6 (pruned)
    layer.encoding.set_gaussian_parameters(torch.zeros(2, 2), torch.tensor([2.45e-3, 5e-7]))
    assert [v.keep for v in head_verdicts(model)] == [True, False]


def test_thresholds_can_be_overridden() -> None:
    eye = torch.eye(2)
    model = _full_model_with([4.9e-3 * eye, torch.diag(torch.tensor([1.0, 1e-4])), eye])
    assert [v.keep for v in head_verdicts(model)] == [True, False, True]
    assert [v.keep for v in head_verdicts(model, min_eigenvalue=1e-2)] == [False, False, True]
    assert [v.keep for v in head_verdicts(model, max_condition=1e5)] == [True, True, True]
    assert [v.keep for v in head_verdicts(model, min_eigenvalue=0.0,
                                          max_condition=1.0)] == [True, False, True]


def test_prune_command_flags_override_the_thresholds(degenerate_run: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from attnconv.cli import main

    def degenerate_count(*flags: str) -> str:
        assert main(["prune", str(degenerate_run), "--out", str(tmp_path / "o"), "--dry-run",
                     *flags]) == 0
        return capsys.readouterr().out.strip().splitlines()[-1]

    assert degenerate_count() == "1 of 6 heads are degenerate"
    assert degenerate_count("--max-condition", "1e9") == "0 of 6 heads are degenerate"
    assert degenerate_count("--min-eigenvalue", "2") == "6 of 6 heads are degenerate"
    assert not (tmp_path / "o").exists()


# --- Input checks: bad numbers are refused before anything is read or written -----------------

@pytest.mark.parametrize(("kwargs", "match"), [
    ({"min_eigenvalue": float("nan")}, "min_eigenvalue must be a finite number"),
    ({"min_eigenvalue": float("inf")}, "min_eigenvalue must be a finite number"),
    ({"min_eigenvalue": -1e-5}, "min_eigenvalue must be >= 0"),
    ({"max_condition": float("nan")}, "max_condition must be a finite number"),
    ({"max_condition": float("inf")}, "max_condition must be a finite number"),
    ({"max_condition": -10.0}, "max_condition must be >= 1"),
    ({"max_condition": 0.5}, "max_condition must be >= 1"),
    ({"min_eigenvalue": "1e-5"}, "min_eigenvalue must be a number"),
])
def test_library_refuses_bad_thresholds(kwargs: dict, match: str) -> None:
    model = _full_model_with([torch.eye(2)])
    with pytest.raises(ConfigError, match=match):
        head_verdicts(model, **kwargs)
    with pytest.raises(ValueError, match=match):  # ConfigError is a ValueError
        check_thresholds(kwargs.get("min_eigenvalue", MIN_EIGENVALUE),
                         kwargs.get("max_condition", MAX_CONDITION))


@pytest.mark.parametrize(("flag", "value"), [
    ("--min-eigenvalue", "nan"), ("--min-eigenvalue", "inf"), ("--min-eigenvalue", "-1e-5"),
    ("--max-condition", "nan"), ("--max-condition", "inf"), ("--max-condition", "-3"),
    ("--max-condition", "0.5"), ("--finetune-epochs", "-1"), ("--lr", "nan"),
    ("--lr", "inf"), ("--lr", "0"), ("--lr", "-0.1"),
])
def test_prune_command_refuses_bad_numbers(degenerate_run: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str], flag: str,
                                           value: str) -> None:
    from attnconv.cli import main

    out = tmp_path / "out"
    before = sorted(p.relative_to(degenerate_run) for p in degenerate_run.rglob("*"))
    code = main(["prune", str(degenerate_run), "--out", str(out), f"{flag}={value}"])
    err = capsys.readouterr().err
    assert code != 0
    assert len(err.strip().splitlines()) == 1, err
    assert flag in err and "Traceback" not in err
    assert not out.exists()
    assert sorted(p.relative_to(degenerate_run) for p in degenerate_run.rglob("*")) == before


def test_prune_command_refuses_a_file_as_out(degenerate_run: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from attnconv.cli import main

    out = tmp_path / "out"
    out.write_text("keep me")
    assert main(["prune", str(degenerate_run), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "is a file" in err
    assert out.read_text() == "keep me"
