"""Rebuild a trained model from a checkpoint alone (weights + the metadata saved with them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from attnconv.errors import CheckpointError
from attnconv.models import create_model
from attnconv.train.checkpoint import load_checkpoint


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or the best (else last) checkpoint of a run directory."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.safetensors", "last.safetensors"):
            if (path / "checkpoints" / name).is_file():
                return path / "checkpoints" / name
        raise CheckpointError(f"{path} holds no checkpoints/best.safetensors or "
                              f"checkpoints/last.safetensors; pass a run directory written by "
                              f"'attnconv train' or a .safetensors file")
    return path


def load_model(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Build the checkpoint's model, load its weights, return ``(model in eval mode, meta)``."""
    ckpt = load_checkpoint(resolve_checkpoint(path))
    meta = ckpt.meta
    try:
        size = meta["image_size"]
        model = create_model(meta["model"], num_classes=meta["num_classes"],
                             in_chans=meta["in_chans"],
                             image_size=size[0] if size[0] == size[1] else tuple(size),
                             **meta.get("model_args", {}))
    except KeyError as err:
        raise CheckpointError(f"{ckpt.path} lacks the metadata {err} needed to rebuild its "
                              f"model") from err
    model.load_state_dict(ckpt.section("model"))
    return model.eval(), meta
