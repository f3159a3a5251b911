"""attnconv.prune.write_pruned_run: the pruned model as a new run that training continues."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from attnconv.prune import SOURCE_ONLY_META, head_verdicts, prune_model, write_pruned_run
from attnconv.train import load_checkpoint
from attnconv.train.model_io import load_model


def test_pruned_run_holds_the_pruned_weights_and_a_fresh_schedule(quadratic_run: Path,
                                                                  tmp_path: Path) -> None:
    model, meta = load_model(quadratic_run)
    verdicts = head_verdicts(model)
    verdicts[1] = dataclasses.replace(verdicts[1], keep=False, reason="test")  # layer 0, head 1
    pruned = prune_model(model, verdicts)
    out = tmp_path / "pruned"
    cfg = write_pruned_run(pruned, meta, verdicts, out, source=quadratic_run, epochs=0)

    assert (cfg.name, cfg.epochs, cfg.lr) == ("pruned", 1, meta["config"]["lr"] / 10)
    assert cfg.model_args["heads"] == [3, 4]
    ckpt = load_checkpoint(out / "checkpoints" / "step-00000000.safetensors")
    carried = set(SOURCE_ONLY_META) - {"format", "sha256", "progress"}  # reset, not copied
    assert not carried & set(ckpt.meta)
    assert ckpt.meta["progress"]["epoch"] == 0
    assert ckpt.meta["pruned_from"] == str(quadratic_run)
    assert [(h["layer"], h["head"]) for h in ckpt.meta["pruned_heads"]] == [(0, 1)]
    assert len(json.loads((out / "pruning.json").read_text())) == len(verdicts)
    rebuilt, _ = load_model(out / "checkpoints" / "step-00000000.safetensors")
    images = torch.randn(2, int(meta["in_chans"]), *(int(v) for v in meta["image_size"]))
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(images), pruned.eval()(images))
    assert write_pruned_run(pruned, meta, verdicts, tmp_path / "b", source="x", epochs=3,
                            lr=0.5).lr == 0.5
