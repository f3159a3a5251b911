"""Theorem 1 on a trained CNN: convert every convolution to self-attention and check that the
network still classifies every test image the same way (PAPER section 2).

:func:`check_conversion` converts a trained network with :func:`attnconv.theorem.convert_model`
(one attention head per kernel offset, Lemma 1; the Gaussian width ``alpha`` makes each
softmax one-hot to the dtype's precision), checks that no convolution is left, evaluates both
networks on the same images and compares their predictions image by image.
:func:`write_check` / :func:`read_check` store the result as ``theorem1.json`` in a run
directory, where :mod:`attnconv.analysis.report` finds it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from attnconv.atomic import atomic_write_text

FILE_NAME = "theorem1.json"
ROW_LABEL = "cnn -> attention (Theorem 1)"
ANY_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
            nn.ConvTranspose3d)


@dataclass(frozen=True)
class ConversionCheck:
    """Both networks on the same images.

    ``predictions_identical`` compares the argmax of the two networks on every image;
    ``min_margin`` is the smallest gap between the CNN's two largest logits: when it exceeds
    ``2 * max_logit_diff`` no prediction can differ (no logit moved by more than
    ``max_logit_diff``), so a near-tie is visible before it flips a prediction.
    """

    images: int
    convolutions: int  # converted Conv1d/Conv2d modules
    heads: int  # attention heads of the converted network, all layers together
    params: int  # parameters of the converted network
    cnn_accuracy: float
    test_accuracy: float  # of the converted network
    predictions_identical: bool
    mismatches: int
    max_logit_diff: float
    min_margin: float
    cnn_time_s: float
    attention_time_s: float
    dtype: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def _logits(model: nn.Module, images: Tensor, batch_size: int) -> tuple[Tensor, float]:
    """Logits ``(N, classes)`` of ``model`` in eval mode over ``images`` and the time taken."""
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            out = torch.cat([model(images[i:i + batch_size])
                             for i in range(0, len(images), batch_size)])
    finally:
        model.train(was_training)
    return out, time.perf_counter() - t0


def check_conversion(model: nn.Module, images: Tensor, labels: Tensor, *,
                     batch_size: int = 250) -> tuple[nn.Module, ConversionCheck]:
    """Convert ``model``'s convolutions to attention and compare both networks on ``images``.

    Args:
        model: a trained network (not modified: a converted copy is returned).
        images: normalised inputs ``(N, C, H, W)`` in the model's dtype.
        labels: ``(N,)`` class indices.
        batch_size: images per forward pass (memory of the converted network grows with it).

    Returns:
        ``(converted network, check)``.

    Raises:
        ValueError: no convolution to convert, a convolution left after the conversion (a type
            Theorem 1's construction does not cover, such as ``Conv3d``), or mismatched inputs.
    """
    from attnconv.theorem import ConvAttention, convert_model

    if len(images) == 0 or len(images) != len(labels):
        raise ValueError(f"pass as many labels as images (at least one), got {len(images)} "
                         f"images and {len(labels)} labels")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv1d | nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no Conv1d/Conv2d to convert")
    converted = convert_model(model)
    left = [n or "(root)" for n, m in converted.named_modules() if isinstance(m, ANY_CONV)]
    if left:
        raise ValueError(f"convolutions left after the conversion: {', '.join(left)}; "
                         f"Theorem 1's construction covers Conv1d and Conv2d only")
    heads = sum(m.heads for m in converted.modules() if isinstance(m, ConvAttention))
    reference, cnn_time = _logits(model, images, batch_size)  # (N, classes)
    attention, attention_time = _logits(converted, images, batch_size)  # (N, classes)
    cnn_pred, att_pred = reference.argmax(dim=1), attention.argmax(dim=1)
    top2 = reference.topk(2, dim=1).values if reference.shape[1] > 1 else None
    margin = float((top2[:, 0] - top2[:, 1]).min()) if top2 is not None else float("inf")
    check = ConversionCheck(
        images=len(images), convolutions=len(convs), heads=heads,
        params=sum(p.numel() for p in converted.parameters()),
        cnn_accuracy=float((cnn_pred == labels).double().mean()),
        test_accuracy=float((att_pred == labels).double().mean()),
        predictions_identical=bool((cnn_pred == att_pred).all()),
        mismatches=int((cnn_pred != att_pred).sum()),
        max_logit_diff=float((reference - attention).abs().max()),
        min_margin=margin, cnn_time_s=cnn_time, attention_time_s=attention_time,
        dtype=str(images.dtype).removeprefix("torch."))
    return converted, check


def check_run(run_dir: str | Path, *, images: int | None = None, data_dir: str | None = None,
              batch_size: int = 250, dtype: torch.dtype = torch.float32) -> ConversionCheck:
    """:func:`check_conversion` of a trained run's best checkpoint on its test split.

    Args:
        run_dir: a run directory written by ``attnconv train`` (or a checkpoint).
        images: the first ``images`` test images (default: the whole test split).
        data_dir: where the dataset files are (default: the run's own).
        batch_size: images per forward pass.
        dtype: precision of both networks (float64 makes a flipped near-tie between two
            logits ~1e9 times less likely than float32, at ~2x the time).
    """
    from attnconv.data import load_dataset, normalize
    from attnconv.train.model_io import load_model

    model, meta = load_model(run_dir)
    arrays = load_dataset(meta["dataset"], "test",
                          data_dir or (meta.get("config") or {}).get("data_dir"))
    count = len(arrays.labels) if images is None else images
    raw = torch.from_numpy(arrays.images[:count]).permute(0, 3, 1, 2)  # (N, C, H, W) uint8
    x = normalize(raw, meta["mean"], meta["std"])  # as the trainer's evaluation
    y = torch.from_numpy(arrays.labels[:count]).long()
    return check_conversion(model.to(dtype), x.to(dtype), y, batch_size=batch_size)[1]


def write_check(run_dir: str | Path, check: ConversionCheck) -> Path:
    """Write ``theorem1.json`` into ``run_dir``; returns its path."""
    path = Path(run_dir) / FILE_NAME
    atomic_write_text(path, json.dumps(check.as_dict(), indent=2) + "\n")
    return path


def read_check(run_dir: str | Path) -> dict[str, Any] | None:
    """The ``theorem1.json`` of a run as a dict, or None if the run has none."""
    path = Path(run_dir) / FILE_NAME
    return json.loads(path.read_text()) if path.is_file() else None
