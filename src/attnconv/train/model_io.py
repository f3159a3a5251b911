"""Rebuild a trained model from a checkpoint alone (weights + the metadata saved with them)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attnconv.errors import CheckpointError, ConfigError, ShapeError
from attnconv.models import create_model
from attnconv.train.checkpoint import Checkpoint, load_checkpoint
from attnconv.train.checkpoint_meta import MODEL_KEYS, require_keys

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


def build_checkpoint_model(ckpt: Checkpoint) -> nn.Module:
    """The model a checkpoint describes, with its weights, in eval mode.

    The metadata was validated on load; here the model is first built on the ``meta`` device
    (no memory) and its parameter names and shapes compared with the stored weights, so a
    file whose sizes no model can have fails before anything is allocated.

    Raises:
        CheckpointError: naming the file and the key (``model``, ``model_args``, a weight).
    """
    meta, path = ckpt.meta, ckpt.path
    require_keys(meta, MODEL_KEYS, path, "rebuild its model")
    try:
        kwargs = model_kwargs(meta["model_args"], num_classes=meta["num_classes"],
                              in_chans=meta["in_chans"], image_size=meta["image_size"])
        with torch.device("meta"):
            shapes = {k: tuple(v.shape)
                      for k, v in create_model(meta["model"], **kwargs).state_dict().items()}
    except (ConfigError, ShapeError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path} has model={meta['model']!r}, model_args="
                              f"{meta['model_args']!r} that no model can have: "
                              f"{str(err).splitlines()[0] if str(err) else err!r}") from err
    stored = {k: tuple(v.shape) for k, v in ckpt.section("model").items()}
    for name in sorted(shapes.keys() | stored.keys()):
        if shapes.get(name) != stored.get(name):
            raise CheckpointError(
                f"{path} holds weights that do not fit its model {meta['model']!r}: "
                f"model.{name} is {stored.get(name, 'missing')} in the file, "
                f"{shapes.get(name, 'not a parameter')} in the model; use another checkpoint")
    model = create_model(meta["model"], **kwargs)
    try:
        model.load_state_dict(ckpt.section("model"))
    except RuntimeError as err:
        raise CheckpointError(f"{path} holds weights that do not fit its model "
                              f"{meta['model']!r}: {str(err).splitlines()[0]}") from err
    return model.eval()


def load_model(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Build the checkpoint's model, load its weights, return ``(model in eval mode, meta)``.

    Raises:
        CheckpointError: the file is missing, damaged, or its metadata cannot describe a model.
    """
    ckpt = load_checkpoint(resolve_checkpoint(path))
    return build_checkpoint_model(ckpt), ckpt.meta
