"""Where a run stands: the counters saved in every checkpoint."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Progress:
    """Where a run stands; saved in every checkpoint."""

    epoch: int = 0  # index of the epoch in progress (= completed epochs at an epoch boundary)
    step_in_epoch: int = 0  # optimisation steps done in that epoch
    global_step: int = 0
    best_val_accuracy: float = -1.0
    best_epoch: int = -1
    loss_sum: float = 0.0  # running sums of the epoch in progress (this rank)
    correct: float = 0.0
    seen: float = 0.0
    train_time_s: float = 0.0
