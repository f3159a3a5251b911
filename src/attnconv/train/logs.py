"""The logs of a run directory: ``metrics.jsonl``, ``heads.jsonl`` and TensorBoard scalars.

Rank 0 writes them; lines are appended once per epoch, and a resume drops the lines of epochs
it is about to redo (and any line a killed process left half-written).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from attnconv.atomic import atomic_write_text
from attnconv.layers import SelfAttention2d
from attnconv.train.state import unwrap

METRICS = "metrics.jsonl"
HEADS = "heads.jsonl"


def gaussian_heads(model: nn.Module) -> list[dict[str, Any]]:
    """Centres, ``Sigma^-1`` and ``alpha`` of every quadratic attention layer, as lists."""
    rows = []
    for layer in unwrap(model).modules():
        if isinstance(layer, SelfAttention2d) and layer.encoding_name.startswith("quadratic"):
            g = layer.gaussian_parameters()
            rows.append({"centers": g.centers.tolist(),
                         "inv_covariance": g.inv_covariance.tolist(),
                         "alpha": None if g.alpha is None else g.alpha.tolist()})
    return rows


def tensorboard_writer(run_dir: Path) -> Any:
    """A TensorBoard ``SummaryWriter`` on ``run_dir/tensorboard`` if TensorBoard is installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional: metrics.jsonl always has everything
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def truncate_jsonl(path: Path, keep: Callable[[dict[str, Any]], bool]) -> None:
    """Keep the rows of an append-only log that ``keep`` accepts (after a resume).

    A line a killed process left half-written is dropped too.
    """
    if not path.exists():
        return
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and keep(row):
            rows.append(line)
    atomic_write_text(path, "".join(r + "\n" for r in rows))


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    """Append one JSON line to ``path``."""
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


class RunLogs:
    """The per-epoch logs of one run (``record_heads``: also ``heads.jsonl``), rank 0 only."""

    def __init__(self, run_dir: Path, *, record_heads: bool) -> None:
        self.run_dir = run_dir
        self.record_heads = record_heads
        self.board: Any = None

    def start(self, model: nn.Module) -> None:
        """A new run: empty logs, and the heads at initialisation as epoch 0."""
        for name in (METRICS, HEADS):
            (self.run_dir / name).unlink(missing_ok=True)
        self._heads(model, 0)

    def resume(self, done_epochs: int) -> None:
        """A resumed run: drop the lines of the epochs after ``done_epochs`` (redone now)."""
        for name in (METRICS, HEADS):
            truncate_jsonl(self.run_dir / name, lambda r: r.get("epoch", 0) <= done_epochs)

    def open_board(self) -> None:
        """Start the TensorBoard writer (if TensorBoard is installed)."""
        self.board = tensorboard_writer(self.run_dir)

    def epoch(self, row: dict[str, Any], model: nn.Module) -> None:
        """Log the metrics ``row`` of epoch ``row["epoch"]`` and the heads after it."""
        epoch = row["epoch"]
        append_jsonl(self.run_dir / METRICS, row)
        self._heads(model, epoch)
        if self.board is not None:
            for key, value in row.items():
                if key not in ("epoch", "step") and value is not None:
                    self.board.add_scalar(key, value, epoch)
            self.board.flush()

    def _heads(self, model: nn.Module, epoch: int) -> None:
        heads = gaussian_heads(model) if self.record_heads else []
        if heads:
            append_jsonl(self.run_dir / HEADS, {"epoch": epoch, "layers": heads})
