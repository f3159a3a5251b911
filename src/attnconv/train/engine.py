"""One optimisation step, one pass over a split: the parts of training read top to bottom."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnconv.data import normalize
from attnconv.data.transforms import crop_flip, draw_crop_flip
from attnconv.errors import ConfigError
from attnconv.train.distributed import DistInfo, all_reduce_sum, any_rank
from attnconv.train.progress import Progress

if TYPE_CHECKING:
    from attnconv.data.training import Data
    from attnconv.train.config import TrainConfig

AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed-precision context: ``bf16``/``fp16`` autocast, nothing for ``fp32``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AUTOCAST[precision])


def slow_precision_warning(device: torch.device, precision: str) -> str | None:
    """A warning when ``precision`` has no native support on ``device``, else ``None``.

    bf16 autocast on a CPU without AVX-512 BF16 or AMX runs its matrix products emulated:
    ``attnconv bench`` measured bf16 GEMMs ~130x slower than fp32 on such a CPU (AMD EPYC Zen 3,
    docs/performance.md). fp16 autocast on a CPU is emulated likewise.
    """
    if device.type != "cpu" or precision == "fp32":
        return None
    if precision == "bf16" and (torch.cpu._is_avx512_bf16_supported()
                                or torch.cpu._is_amx_tile_supported()):
        return None
    if precision == "fp16" and torch.cpu._is_amx_fp16_supported():
        return None
    return (f"warning: precision={precision} on a CPU without native {precision} matrix "
            f"products ({torch.backends.cpu.get_cpu_capability()}): they are emulated and much "
            f"slower than fp32; use precision=fp32 on this machine")


def compile_model(net: nn.Module, device: torch.device,
                  backend: str = "inductor") -> nn.Module:
    """``torch.compile(net)`` for training on ``device``.

    On a CPU, inductor's layout optimisation is off: it turns convolution inputs channels-last,
    and oneDNN's AVX2 backward of a strided 1x1 convolution on channels-last input (ResNet's
    downsampling shortcut) corrupts the heap and aborts the process with torch 2.13 (reproduced
    eagerly on an AMD EPYC Zen 3 with ``aten.convolution_backward``; fine with AVX-512 or
    ``ONEDNN_MAX_CPU_ISA=SSE41``). Keeping the eager (contiguous) layout avoids that kernel.
    """
    if backend == "inductor" and device.type == "cpu":
        return torch.compile(net, backend=backend, options={"layout_optimization": False})
    return torch.compile(net, backend=backend)


def step_seed(seed: int, epoch: int, step: int, rank: int = 0) -> int:
    """A seed for one training step: data augmentation and dropout depend only on it.

    This is what makes a resumed run bit-identical to an uninterrupted one: no random state
    needs to survive between steps.
    """
    return (seed * 1_000_003 + epoch * 100_003 + step * 101 + rank) % (2**63 - 1)


def epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    """The shuffled order of the ``n`` training examples in ``epoch`` (seeded, resumable)."""
    # reduced like step_seed so that every seed in [0, 2**63) gives a valid generator seed
    g = torch.Generator().manual_seed((seed * 7919 + epoch) % (2**63 - 1))
    return torch.randperm(n, generator=g)


def make_batch(images: Tensor, labels: Tensor, index: Tensor, *, mean: Sequence[float],
               std: Sequence[float], augment: bool, generator: torch.Generator | None,
               device: torch.device, part: slice = slice(None)) -> tuple[Tensor, Tensor]:
    """Gather ``index[part]`` from uint8 ``(N, C, H, W)`` images, augment, normalise, move.

    The crops and flips are drawn for the whole (global) batch ``index`` and then sliced to this
    process's ``part``, so a distributed run augments exactly like a single process.
    """
    if augment:
        offsets, flips = draw_crop_flip(len(index), generator)  # random crop (pad 4) + flip
        x = crop_flip(images[index[part]], offsets[part], flips[part])  # (B, C, H, W) uint8
    else:
        x = images[index[part]]  # (B, C, H, W) uint8
    x = normalize(x, mean, std)  # (B, C, H, W) float32
    return x.to(device, non_blocking=True), labels[index[part]].to(device, non_blocking=True)


def train_step(model: nn.Module, x: Tensor, y: Tensor, optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler, *, precision: str,
               scaler: torch.amp.GradScaler | None) -> tuple[Tensor, Tensor]:
    """Forward, backward, SGD step, scheduler step; returns ``(loss, correct)`` as tensors."""
    with autocast(x.device, precision):
        logits = model(x)  # (B, classes)
        loss = F.cross_entropy(logits.float(), y)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    scheduler.step()
    return loss.detach(), (logits.argmax(dim=-1) == y).sum()


class StepHooks(Protocol):
    """What :func:`train_one_epoch` asks of the run around it (checkpoints, signals, errors)."""

    def step_start(self, epoch: int, step: int) -> None:
        """Step ``step`` (1-based) of ``epoch`` (0-based) begins."""

    def diverged(self, what: str, global_step: int) -> Exception:
        """The error to raise when the loss became non-finite at ``global_step``."""

    def step_checkpoint(self) -> Path:
        """Save a step checkpoint of the current progress; return its path."""

    def stop_requested(self) -> bool:
        """Whether this process received SIGINT/SIGTERM."""

    def interrupted(self, saved: Path | None) -> Exception:
        """The error that ends the run after a stop signal (``saved``: this step's checkpoint,
        or None to write one now)."""


def train_one_epoch(net: nn.Module, data: Data, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler,
                    scaler: torch.amp.GradScaler | None, progress: Progress, *,
                    cfg: TrainConfig, epoch: int, steps_per_epoch: int, info: DistInfo,
                    hooks: StepHooks, progress_bar: bool = False) -> float:
    """Train the remaining steps of ``epoch`` (from ``progress.step_in_epoch``); return the
    seconds it took. ``progress`` counts the steps and sums the loss and accuracy.

    Every rank takes its part of the same global batch; the loss guard and the stop check are
    agreed between ranks (one all-reduce per step, a second one after a step checkpoint) so
    that all stop at the same step.
    """
    net.train()
    n_train = len(data.train[1])
    order = epoch_order(n_train, cfg.seed, epoch)
    per_rank = cfg.batch_size // info.world_size
    part = slice(info.rank * per_rank, (info.rank + 1) * per_rank)
    t0 = time.perf_counter()
    steps: Iterable[int] = range(progress.step_in_epoch, steps_per_epoch)
    if progress_bar:
        from tqdm import tqdm
        steps = tqdm(steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False)
    for step in steps:
        hooks.step_start(epoch, step + 1)
        batch = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
        x, y = make_batch(*data.train, batch, mean=data.mean, std=data.std,
                          augment=cfg.augment, device=info.device, part=part,
                          generator=torch.Generator().manual_seed(
                              step_seed(cfg.seed, epoch, step)))
        # dropout masks depend on the step (and rank) only
        torch.manual_seed(step_seed(cfg.seed, epoch, step, info.rank))
        loss, correct = train_step(net, x, y, optimizer, scheduler,
                                   precision=cfg.precision, scaler=scaler)
        # the guard reads the loss every step (one host sync either way); summed as a Python
        # float, exactly as logged and checkpointed
        loss_value = loss.item()
        # one collective per step: "non-finite loss on some rank?" and "stop signal on some
        # rank?" in one tensor
        bad, stop = any_rank([not math.isfinite(loss_value), hooks.stop_requested()], info)
        if bad:
            what = (f"the loss became {loss_value}" if not math.isfinite(loss_value)
                    else "the loss became NaN or infinite on another rank")
            raise hooks.diverged(what, progress.global_step + 1)
        progress.loss_sum += loss_value * len(y)
        progress.correct += float(correct)
        progress.seen += len(y)
        progress.step_in_epoch = step + 1
        progress.global_step += 1
        saved = None
        if cfg.checkpoint_every_steps and (
                progress.global_step % cfg.checkpoint_every_steps == 0):
            saved = hooks.step_checkpoint()
            # a checkpoint step asks again after its write: a signal that arrived during the
            # write stops the run at this step, with this checkpoint
            stop = any_rank([hooks.stop_requested()], info)[0]
        if stop:
            progress.train_time_s += time.perf_counter() - t0
            raise hooks.interrupted(saved)
    return time.perf_counter() - t0


def batches(n: int, batch_size: int) -> Iterator[slice]:
    """Consecutive slices covering ``range(n)``, the last one possibly shorter."""
    for start in range(0, n, batch_size):
        yield slice(start, min(n, start + batch_size))


@torch.no_grad()
def evaluate(model: nn.Module, images: Tensor, labels: Tensor, *, mean: Sequence[float],
             std: Sequence[float], batch_size: int, device: torch.device, precision: str = "fp32",
             info: DistInfo | None = None) -> dict[str, float]:
    """Loss and accuracy over a whole split (sharded over ranks, then summed).

    Raises:
        ConfigError: the split holds no images (an accuracy over nothing is not a number),
            or ``batch_size`` is not a positive integer.
    """
    if len(labels) == 0:
        raise ConfigError("cannot evaluate on zero images: the split is empty (accuracy over "
                          "no images is undefined); evaluate a split that holds images")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"the evaluation batch size must be a positive integer, got "
                          f"{batch_size!r}")
    info = info or DistInfo(device=device)
    was_training = model.training
    model.eval()
    shard = torch.arange(info.rank, len(labels), info.world_size)
    loss_sum, correct = 0.0, 0.0
    for sl in batches(len(shard), batch_size):
        x, y = make_batch(images, labels, shard[sl], mean=mean, std=std, augment=False,
                          generator=None, device=device)
        with autocast(device, precision):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
        correct += (logits.argmax(dim=-1) == y).sum().item()
    model.train(was_training)
    loss_sum, correct, count = all_reduce_sum([loss_sum, correct, float(len(shard))], info)
    return {"loss": loss_sum / count, "accuracy": correct / count}
