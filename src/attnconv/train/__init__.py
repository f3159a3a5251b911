"""Training: configuration, the paper's optimiser and schedule, checkpoints, the run loop."""

from attnconv.train.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from attnconv.train.config import TrainConfig, load_config
from attnconv.train.trainer import TrainingDiverged, TrainingInterrupted, train

__all__ = [
    "Checkpoint",
    "TrainConfig",
    "TrainingDiverged",
    "TrainingInterrupted",
    "load_checkpoint",
    "load_config",
    "save_checkpoint",
    "train",
]
