"""Optimiser and learning-rate schedule of the paper's recipe (PAPER section 3)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from attnconv.train.config import TrainConfig


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split parameters into a weight-decayed group and a no-decay group.

    No decay for what ``model.no_weight_decay()`` names (the Gaussian centres, widths and S
    matrices: PAPER section 3), nothing else: the paper decays every other parameter.
    """
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if name in skip else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.SGD:
    """SGD with momentum (lr 0.1, momentum 0.9, weight decay 1e-4 in the paper)."""
    return torch.optim.SGD(parameter_groups(model, cfg.weight_decay), lr=cfg.lr,
                           momentum=cfg.momentum)


def lr_factor(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """The multiplier of the base learning rate after ``step`` optimisation steps.

    ``warmup-cosine``: linear warm-up over ``warmup_fraction`` of all steps, then cosine decay
    to 0, stepped per optimisation step. ``multistep``: divided by ``1/gamma`` at each epoch in
    ``milestones`` (ResNet18: 80, 150, 250).
    """
    total = cfg.epochs * steps_per_epoch
    warmup = round(cfg.warmup_fraction * total)

    def warmup_cosine(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    def multistep(step: int) -> float:
        epoch = step // steps_per_epoch
        return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)

    if cfg.schedule == "warmup-cosine":
        return warmup_cosine
    if cfg.schedule == "multistep":
        return multistep
    return lambda step: 1.0


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                   steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step ``LambdaLR`` following :func:`lr_factor`."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, steps_per_epoch))
