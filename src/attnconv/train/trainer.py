"""A training run from configuration to test accuracy: data, model, loop, checkpoints, results.

Files in the run directory (``out_dir/name``), written by rank 0 only, each atomically:
``config.yaml`` (resolved config), ``metrics.jsonl`` (one line per epoch), ``heads.jsonl``
(Gaussian head centres and widths per epoch, quadratic models), ``checkpoints/last.safetensors``
(every epoch), ``checkpoints/best.safetensors`` (best validation accuracy),
``checkpoints/step-*.safetensors`` (every ``checkpoint_every_steps``, last ``keep_last`` kept) and
``results.json`` (test accuracy of the best checkpoint).
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from attnconv.data import compute_stats, dataset_stats, load_dataset, train_val_split
from attnconv.errors import AttnconvError, CheckpointError, ConfigError
from attnconv.layers import SelfAttention2d
from attnconv.models import create_model
from attnconv.train import distributed
from attnconv.train.checkpoint import (
    atomic_write_text,
    load_checkpoint,
    save_checkpoint,
)
from attnconv.train.config import TrainConfig, load_config
from attnconv.train.engine import epoch_order, evaluate, make_batch, step_seed, train_step
from attnconv.train.optim import make_optimizer, make_scheduler
from attnconv.train.state import capture, restore, unwrap


class TrainingInterrupted(AttnconvError):
    """Training stopped on Ctrl-C or SIGTERM after writing a checkpoint."""


class TrainingDiverged(AttnconvError, FloatingPointError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


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


@dataclass
class Data:
    """The splits as uint8 ``(N, C, H, W)`` tensors with labels, and the normalisation."""

    train: tuple[Tensor, Tensor]
    val: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        c, h, w = self.train[0].shape[1:]
        return c, h, w


def load_data(cfg: TrainConfig) -> Data:
    """Load train/test, hold out the validation split, convert to tensors."""
    train = load_dataset(cfg.dataset, "train", cfg.data_dir)
    test = load_dataset(cfg.dataset, "test", cfg.data_dir)
    train_idx, val_idx = train_val_split(len(train), cfg.val_fraction, cfg.seed, train.labels)
    if cfg.train_subset is not None:
        train_idx = train_idx[:cfg.train_subset]
    try:
        mean, std = dataset_stats(cfg.dataset)
    except ConfigError:
        mean, std = compute_stats(train)

    def tensors(images: Any, labels: Any) -> tuple[Tensor, Tensor]:
        x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # (N, C, H, W) uint8
        return x, torch.from_numpy(labels).long()

    return Data(tensors(train.images[train_idx], train.labels[train_idx]),
                tensors(train.images[val_idx], train.labels[val_idx]),
                tensors(test.images, test.labels), list(train.classes),
                tuple(map(float, mean)), tuple(map(float, std)))


def build_model(cfg: TrainConfig, num_classes: int, shape: tuple[int, int, int]) -> nn.Module:
    """The registry model for ``cfg`` at the data's shape."""
    c, h, w = shape
    return create_model(cfg.model, num_classes=num_classes, in_chans=c,
                        image_size=h if h == w else (h, w), **cfg.model_args)


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


def _append_jsonl(path: Path, row: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def _truncate_jsonl(path: Path, keep: Callable[[dict[str, Any]], bool]) -> None:
    """Keep the rows of an append-only log that ``keep`` accepts (after a resume)."""
    if path.exists():
        rows = [line for line in path.read_text().splitlines()
                if line.strip() and keep(json.loads(line))]
        atomic_write_text(path, "".join(r + "\n" for r in rows))


def newest_checkpoint(run_dir: Path, log: Callable[[str], None] = print) -> Any:
    """The newest checkpoint of a run that loads cleanly, falling back to older ones."""
    ckpt_dir = run_dir / "checkpoints"
    candidates = [p for p in ckpt_dir.glob("*.safetensors") if p.name != "best.safetensors"]
    if not candidates:
        raise CheckpointError(f"no checkpoint in {ckpt_dir}; nothing to resume (start the run "
                              f"without --resume)")

    def order(p: Path) -> tuple[int, float]:
        try:
            step = int(load_checkpoint(p, verify=False).meta["progress"]["global_step"])
        except (CheckpointError, KeyError, TypeError, ValueError):
            step = -1
        return step, p.stat().st_mtime

    failures = []
    for path in sorted(candidates, key=order, reverse=True):
        try:
            ckpt = load_checkpoint(path)
        except CheckpointError as err:
            failures.append(str(err))
            continue
        for message in failures:
            log(f"warning: {message}; falling back to {path}")
        return ckpt
    raise CheckpointError("no complete checkpoint in " + str(ckpt_dir) + ": " + "; ".join(failures))


class _StopFlag:
    """Turns SIGINT/SIGTERM into a flag checked between steps (main thread only)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        import threading
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._set)
        return self

    def _set(self, signum: int, frame: Any) -> None:
        self.signal = signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def train(cfg: TrainConfig | None = None, *, resume: str | Path | None = None,
          log: Callable[[str], None] = print, progress_bar: bool | None = None) -> dict[str, Any]:
    """Train, choosing the best epoch on the validation split; return the results dictionary.

    ``resume`` continues the run in that directory from its newest complete checkpoint (its
    saved ``config.yaml`` is used; ``cfg`` must then be None).
    """
    if resume is not None:
        run_dir = Path(resume)
        if cfg is not None:
            raise ConfigError("pass either a config or resume=RUN_DIR, not both")
        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"{run_dir} is not a run directory (no config.yaml); pass the "
                              f"directory a previous 'attnconv train' wrote")
        cfg = load_config(run_dir / "config.yaml")
    else:
        cfg = (cfg or TrainConfig()).validate()
        run_dir = Path(cfg.out_dir) / cfg.name
    dist_info = distributed.setup(cfg.device)
    try:
        return _run(cfg, run_dir, resume is not None, dist_info, log, progress_bar)
    finally:
        distributed.teardown()


def _run(cfg: TrainConfig, run_dir: Path, resuming: bool, dist_info: distributed.DistInfo,
         log: Callable[[str], None], progress_bar: bool | None) -> dict[str, Any]:
    main = dist_info.is_main
    say = log if main else (lambda _msg: None)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    ckpt_dir = run_dir / "checkpoints"
    if not resuming and ckpt_dir.exists() and any(ckpt_dir.glob("*.safetensors")):
        raise ConfigError(f"{run_dir} already holds a run; continue it with --resume {run_dir} "
                          f"or choose another name (name=...)")
    if cfg.batch_size % dist_info.world_size:
        raise ConfigError(f"batch_size={cfg.batch_size} is not divisible by the "
                          f"{dist_info.world_size} processes; choose a multiple")

    ckpt = newest_checkpoint(run_dir, say) if resuming else None  # fail before loading data
    data = load_data(cfg)
    n_train = len(data.train[1])
    steps_per_epoch = n_train // cfg.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(f"batch_size={cfg.batch_size} is larger than the {n_train} training "
                          f"images; lower batch_size")
    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    model = build_model(cfg, len(data.classes), data.shape).to(dist_info.device)
    params = sum(p.numel() for p in model.parameters())
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch)
    scaler = (torch.amp.GradScaler(dist_info.device.type) if cfg.precision == "fp16" else None)

    progress = Progress()
    if ckpt is not None:
        restore(ckpt, model, optimizer, scheduler, scaler)
        progress = Progress(**ckpt.meta["progress"])
        say(f"resuming {run_dir} from {ckpt.path.name} (epoch {progress.epoch + 1}, "
            f"step {progress.step_in_epoch}/{steps_per_epoch})")
        if main:
            done = progress.epoch
            _truncate_jsonl(run_dir / "metrics.jsonl", lambda r: r["epoch"] <= done)
            _truncate_jsonl(run_dir / "heads.jsonl", lambda r: r["epoch"] <= done)
    elif main:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / "config.yaml")
        for name in ("metrics.jsonl", "heads.jsonl"):
            (run_dir / name).unlink(missing_ok=True)
        if cfg.record_heads and gaussian_heads(model):
            _append_jsonl(run_dir / "heads.jsonl", {"epoch": 0, "layers": gaussian_heads(model)})

    net: nn.Module = model
    if dist_info.distributed:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[dist_info.device.index] if dist_info.device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)

    meta_common = {"config": cfg.to_dict(), "model": cfg.model, "model_args": cfg.model_args,
                   "num_classes": len(data.classes), "classes": data.classes,
                   "in_chans": data.shape[0], "image_size": list(data.shape[1:]),
                   "dataset": cfg.dataset, "mean": data.mean, "std": data.std}

    def save(path: Path) -> None:
        if main:
            tensors, meta = capture(model, optimizer, scheduler, scaler)
            save_checkpoint(path, tensors, {**meta, **meta_common, "progress": asdict(progress)})

    def save_step_checkpoint() -> None:
        save(ckpt_dir / f"step-{progress.global_step:08d}.safetensors")
        steps = sorted(ckpt_dir.glob("step-*.safetensors"))
        for old in steps[:-cfg.keep_last] if main else []:
            old.unlink(missing_ok=True)

    per_rank = cfg.batch_size // dist_info.world_size
    use_bar = progress_bar if progress_bar is not None else sys.stderr.isatty()
    result: dict[str, Any] = {}
    with _StopFlag() as stop:
        for epoch in range(progress.epoch, cfg.epochs):
            net.train()
            order = epoch_order(n_train, cfg.seed, epoch)
            t0 = time.perf_counter()
            steps = range(progress.step_in_epoch, steps_per_epoch)
            bar = None
            if use_bar and main:
                from tqdm import tqdm
                bar = tqdm(steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False)
            for step in bar if bar is not None else steps:
                batch = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
                part = slice(dist_info.rank * per_rank, (dist_info.rank + 1) * per_rank)
                x, y = make_batch(*data.train, batch, mean=data.mean, std=data.std,
                                  augment=cfg.augment, device=dist_info.device, part=part,
                                  generator=torch.Generator().manual_seed(
                                      step_seed(cfg.seed, epoch, step)))
                # dropout masks depend on the step (and rank) only
                torch.manual_seed(step_seed(cfg.seed, epoch, step, dist_info.rank))
                loss, correct = train_step(net, x, y, optimizer, scheduler,
                                           precision=cfg.precision, scaler=scaler)
                loss_value = loss.item()
                if not math.isfinite(loss_value):
                    raise TrainingDiverged(
                        f"the loss became {loss_value} at epoch {epoch + 1}, step {step + 1}; "
                        f"the last good checkpoint in {ckpt_dir} is kept (lower lr, or use "
                        f"precision=fp32)")
                progress.loss_sum += loss_value * len(y)
                progress.correct += float(correct)
                progress.seen += len(y)
                progress.step_in_epoch = step + 1
                progress.global_step += 1
                if cfg.checkpoint_every_steps and (
                        progress.global_step % cfg.checkpoint_every_steps == 0):
                    save_step_checkpoint()
                if stop.signal is not None:
                    progress.train_time_s += time.perf_counter() - t0
                    save_step_checkpoint()
                    raise TrainingInterrupted(
                        f"stopped by signal {stop.signal} at epoch {epoch + 1}, step {step + 1}; "
                        f"checkpoint saved; continue with: attnconv train --resume {run_dir}")
            epoch_time = time.perf_counter() - t0
            progress.train_time_s += epoch_time
            loss_sum, correct, seen = distributed.all_reduce_sum(
                [progress.loss_sum, progress.correct, progress.seen], dist_info)
            val = evaluate(model, *data.val, mean=data.mean, std=data.std,
                           batch_size=cfg.eval_batch_size, device=dist_info.device,
                           precision=cfg.precision, info=dist_info)
            row = {"epoch": epoch + 1, "step": progress.global_step,
                   "train_loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1),
                   "val_loss": val["loss"], "val_accuracy": val["accuracy"],
                   "lr": optimizer.param_groups[0]["lr"], "epoch_time_s": epoch_time,
                   "images_per_s": seen / max(epoch_time, 1e-9)}
            improved = val["accuracy"] > progress.best_val_accuracy
            if improved:
                progress.best_val_accuracy, progress.best_epoch = val["accuracy"], epoch + 1
            progress.epoch, progress.step_in_epoch = epoch + 1, 0
            progress.loss_sum = progress.correct = progress.seen = 0.0
            if main:
                _append_jsonl(run_dir / "metrics.jsonl", row)
                if cfg.record_heads and gaussian_heads(model):
                    _append_jsonl(run_dir / "heads.jsonl",
                                  {"epoch": epoch + 1, "layers": gaussian_heads(model)})
            save(ckpt_dir / "last.safetensors")
            if improved:
                save(ckpt_dir / "best.safetensors")
            say(f"epoch {epoch + 1}/{cfg.epochs}  train loss {row['train_loss']:.4f} "
                f"acc {row['train_accuracy']:.4f}  val loss {row['val_loss']:.4f} "
                f"acc {row['val_accuracy']:.4f}  {row['images_per_s']:.0f} img/s")

        if main:
            unwrap(model).load_state_dict(load_checkpoint(ckpt_dir / "best.safetensors")
                                          .section("model"))
        if dist_info.distributed:  # every rank evaluates its shard with the best weights
            for tensor in unwrap(model).state_dict().values():
                torch.distributed.broadcast(tensor, src=0)
        test = evaluate(model, *data.test, mean=data.mean, std=data.std,
                        batch_size=cfg.eval_batch_size, device=dist_info.device,
                        precision=cfg.precision, info=dist_info)
        result = {"name": cfg.name, "model": cfg.model, "dataset": cfg.dataset,
                  "params": params, "epochs": cfg.epochs, "best_epoch": progress.best_epoch,
                  "best_val_accuracy": progress.best_val_accuracy,
                  "test_accuracy": test["accuracy"], "test_loss": test["loss"],
                  "train_time_s": progress.train_time_s, "world_size": dist_info.world_size,
                  "device": str(dist_info.device), "precision": cfg.precision}
        if main:
            atomic_write_text(run_dir / "results.json", json.dumps(result, indent=2) + "\n")
        say(f"test accuracy {test['accuracy']:.4f} (best epoch {progress.best_epoch} by "
            f"validation accuracy); results in {run_dir / 'results.json'}")
    return result
