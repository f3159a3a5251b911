"""Rebuild a trained model from a checkpoint alone (weights + the metadata saved with them)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from attnconv.errors import CheckpointError, ConfigError
from attnconv.models import create_model
from attnconv.train.checkpoint import load_checkpoint

#: create_model arguments the data decides; model_args may not set them.
FROM_DATA = ("num_classes", "in_chans")


def model_kwargs(model_args: Mapping[str, Any], *, num_classes: int, in_chans: int,
                 image_size: tuple[int, int] | list[int]) -> dict[str, Any]:
    """Arguments of ``create_model`` for data of ``in_chans`` channels and ``image_size``.

    ``model_args`` may set ``image_size`` (it sizes the learned relative tables); the number
    of classes and channels always come from the data.

    Raises:
        ConfigError: ``model_args`` tries to set ``num_classes`` or ``in_chans``.
    """
    for key in FROM_DATA:
        if key in model_args:
            raise ConfigError(f"model_args.{key} is set from the dataset ({key}="
                              f"{num_classes if key == 'num_classes' else in_chans}); remove it")
    h, w = int(image_size[0]), int(image_size[1])
    return {"num_classes": num_classes, "in_chans": in_chans,
            "image_size": h if h == w else (h, w), **model_args}


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
        kwargs = model_kwargs(meta.get("model_args", {}), num_classes=meta["num_classes"],
                              in_chans=meta["in_chans"], image_size=meta["image_size"])
        model = create_model(meta["model"], **kwargs)
    except KeyError as err:
        raise CheckpointError(f"{ckpt.path} lacks the metadata {err} needed to rebuild its "
                              f"model") from err
    try:
        model.load_state_dict(ckpt.section("model"))
    except RuntimeError as err:
        raise CheckpointError(f"{ckpt.path} holds weights that do not fit its model "
                              f"{meta['model']!r}: {str(err).splitlines()[0]}") from err
    return model.eval(), meta
