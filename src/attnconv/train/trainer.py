"""A training run from configuration to test accuracy: data, model, loop, checkpoints, results.

Files in the run directory (``out_dir/name``), written by rank 0 only, each atomically:
``config.yaml`` (resolved config), ``metrics.jsonl`` (one line per epoch), ``heads.jsonl``
(Gaussian head centres and widths per epoch, quadratic models), ``checkpoints/last.safetensors``
(every epoch), ``checkpoints/best.safetensors`` (best validation accuracy),
``checkpoints/step-*.safetensors`` (every ``checkpoint_every_steps``, last ``keep_last`` kept) and
``results.json`` (test accuracy of the best-by-validation checkpoint, or of the final model when
``val_fraction=0`` leaves no validation split; ``selected`` says which).

A run directory is only ever written when it is new (or empty), when it is resumed
(``resume=``), or with ``overwrite=True``; anything else is refused before a file is written.

What survives what (docs/reliability.md lists the tests):

* SIGKILL / power loss at any moment: checkpoints are written atomically, a resume starts from
  the newest complete one (falling back past corrupted ones, removing unfinished temporary
  files) and, because every step draws its randomness from ``step_seed``, ends bit-identical
  to an uninterrupted run (with ``deterministic=true``).
* SIGINT / SIGTERM: the step in progress finishes, a checkpoint is written, the run exits with
  :class:`TrainingInterrupted` saying how to resume.
* A NaN/inf loss or non-finite weights: :class:`TrainingDiverged`, nothing more is saved.
* A dead or stuck worker under ``torchrun``: collectives fail after ``dist_timeout_s`` at most,
  :class:`WorkerFailed` names the last complete checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attnconv.atomic import atomic_write_text
from attnconv.data.training import Data, load_data
from attnconv.errors import AttnconvError, CheckpointError, ConfigError, ShapeError
from attnconv.models import create_model
from attnconv.train import distributed
from attnconv.train.checkpoint import (
    Checkpoint,
    load_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
)
from attnconv.train.config import TrainConfig, config_from_dict, load_config
from attnconv.train.engine import (
    autocast,
    compile_model,
    evaluate,
    make_batch,
    slow_precision_warning,
    train_one_epoch,
)
from attnconv.train.logs import RunLogs
from attnconv.train.memory import check_fits, estimate_training_memory
from attnconv.train.model_io import model_kwargs
from attnconv.train.optim import make_optimizer, make_scheduler
from attnconv.train.progress import Progress
from attnconv.train.resume import (
    find_newest_checkpoint,
    prune_step_checkpoints,
    report_skipped,
    step_checkpoint_path,
)
from attnconv.train.state import capture, restore, unwrap

#: Test hook (used by tests/train/test_reliability_distributed.py and _kill.py, never
#: set it otherwise): the process of rank ``$ATTNCONV_TEST_CRASH_RANK`` dies just before global
#: step ``$ATTNCONV_TEST_CRASH_STEP`` (once that many steps and their checkpoints are done),
#: with ``os._exit(1)`` as a worker killed by the kernel would, or, when
#: ``$ATTNCONV_TEST_CRASH_HOW`` is ``sigkill``, by sending itself SIGKILL (``kill -9``); with
#: ``hang`` it stops there without dying (a stuck worker), sleeping until killed; with
#: ``pause`` it prints ``test hook: paused`` on stdout and waits there for SIGINT/SIGTERM, then
#: goes on (so a signal test knows the step the signal lands on).
CRASH_RANK_ENV = "ATTNCONV_TEST_CRASH_RANK"
CRASH_STEP_ENV = "ATTNCONV_TEST_CRASH_STEP"
CRASH_HOW_ENV = "ATTNCONV_TEST_CRASH_HOW"

#: What a run writes in its directory; ``overwrite=True`` removes exactly these first.
RUN_FILES = ("config.yaml", "metrics.jsonl", "heads.jsonl", "results.json")
RUN_SUBDIRS = ("checkpoints", "tensorboard")

#: Config keys a resume may differ in from its checkpoint without ``allow_config_change``:
#: where the run lives, where the data is read from (its content is checked by hash), the
#: device and how work is scheduled, how often checkpoints are written. Everything else
#: (model, batch size, schedule, epochs, seed...) would silently make it another run.
RESUME_SAFE_KEYS = frozenset({"name", "out_dir", "data_dir", "device", "threads", "compile",
                              "dist_timeout_s", "checkpoint_every_steps", "keep_last"})


class TrainingInterrupted(AttnconvError):
    """Training stopped on Ctrl-C or SIGTERM after writing a checkpoint.

    ``exit_code`` is the shell's convention for the signal (130 for SIGINT, 143 for SIGTERM).
    """

    def __init__(self, message: str, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + int(signum)


class TrainingDiverged(AttnconvError, FloatingPointError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class WorkerFailed(AttnconvError, RuntimeError):
    """A collective failed: another worker died, hung past ``dist_timeout_s``, or the network
    between workers broke. The last complete checkpoint is intact and resumable."""


def build_model(cfg: TrainConfig, num_classes: int, shape: tuple[int, int, int]) -> nn.Module:
    """The registry model for ``cfg`` at the data's shape (``model_args`` may set image_size)."""
    c, h, w = shape
    return create_model(cfg.model, **model_kwargs(cfg.model_args, num_classes=num_classes,
                                                  in_chans=c, image_size=(h, w)))


def check_model_takes_data(model: nn.Module, cfg: TrainConfig, data: Data,
                           device: torch.device) -> None:
    """One forward pass on one training image, before anything is written.

    Raises :class:`ShapeError` naming the model, the data's image shape and the fix when the
    model cannot take the images (e.g. ``model_args.image_size`` smaller than the data for
    a learned encoding).
    """
    x, _ = make_batch(*data.train, torch.arange(1), mean=data.mean, std=data.std,
                      augment=False, generator=None, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), autocast(device, cfg.precision):
            model(x)
    except ShapeError as err:
        c, h, w = data.shape
        raise ShapeError(f"{cfg.model} cannot take the {cfg.dataset} images ({c} channels, "
                         f"{h}x{w}): {err}") from err
    finally:
        model.train(was_training)


def is_run_directory(path: Path) -> bool:
    """Whether ``path`` holds an attnconv run that can be resumed (config and a checkpoint)."""
    return (path / "config.yaml").is_file() and any((path / "checkpoints").glob("*.safetensors"))


def check_run_directory(run_dir: Path, *, resuming: bool, overwrite: bool) -> None:
    """Refuse, before anything is written, a run directory this run must not write into.

    A new run writes into a directory that does not exist or is empty, or (``overwrite``) into
    any directory, whose run files are then replaced; a resume needs an attnconv run.

    Raises:
        ConfigError: naming the directory and the ways forward.
    """
    if resuming:
        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"{run_dir} is not a run directory (no config.yaml); pass the "
                              f"directory a previous 'attnconv train' wrote")
        return
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir} exists and is not a directory; choose another name=... "
                          f"or out_dir=...")
    if overwrite or not any(run_dir.iterdir()):
        return
    if is_run_directory(run_dir):
        raise ConfigError(f"{run_dir} already holds a run; continue it with --resume {run_dir}, "
                          f"replace it with --overwrite, or choose another name (name=...)")
    raise ConfigError(f"{run_dir} exists and is neither empty nor a resumable attnconv run "
                      f"(config.yaml and a checkpoint); refusing to write into it: choose "
                      f"another name (name=...) or out_dir, or pass --overwrite to replace its "
                      f"run files")


def clear_run_files(run_dir: Path) -> list[Path]:
    """Remove what a previous run wrote in ``run_dir`` (``overwrite``); return what was removed.

    Only :data:`RUN_FILES` and :data:`RUN_SUBDIRS` are touched; other files stay.
    """
    import shutil

    removed = []
    for name in RUN_FILES:
        path = run_dir / name
        if path.is_file() or path.is_symlink():
            path.unlink()
            removed.append(path)
    for name in RUN_SUBDIRS:
        path = run_dir / name
        if path.is_symlink() or path.is_file():
            path.unlink()
            removed.append(path)
        elif path.is_dir():
            shutil.rmtree(path)
            removed.append(path)
    return removed


def config_changes(saved: dict[str, Any], current: TrainConfig) -> list[str]:
    """``key (checkpoint A, config.yaml B)`` for each key where ``current`` differs from the
    config saved in a checkpoint, ignoring :data:`RESUME_SAFE_KEYS`."""
    try:
        before = config_from_dict(saved).to_dict()
    except ConfigError:  # written by another version: compare what is there
        before = dict(saved)
    after = current.to_dict()
    changed = []
    for key in sorted(set(before) | set(after)):
        if key in RESUME_SAFE_KEYS:
            continue
        if json.dumps(before.get(key), sort_keys=True, default=str) != json.dumps(
                after.get(key), sort_keys=True, default=str):
            changed.append(f"{key} (checkpoint {before.get(key)!r}, config.yaml "
                           f"{after.get(key)!r})")
    return changed


class _StopFlag:
    """Turns SIGINT/SIGTERM into a flag checked between steps (main thread only).

    A second signal while the first is pending raises ``KeyboardInterrupt`` at once (checkpoint
    writes are atomic, so even that loses nothing but the steps since the last checkpoint).
    """

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
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _ignore_sigterm(active: bool) -> Iterator[None]:
    """Ignore SIGTERM (main thread) while a failed run tears the process group down.

    torchrun sends SIGTERM to the survivors as soon as one worker fails; arriving after the
    run loop's handler is gone it would kill this process before its one-line message
    (which says how to resume) is printed.
    """
    import threading

    if not active or threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _crash_step(rank: int) -> int | None:
    """The global step before which this rank must die (test hook), or None."""
    if os.environ.get(CRASH_RANK_ENV, "") != str(rank):
        return None
    return int(os.environ.get(CRASH_STEP_ENV, "0"))


def _crash(stop: _StopFlag) -> None:
    """Die at once, as the test hook asks (no cleanup, no flushing, no exception), or (pause)
    wait for a stop signal and return."""
    how = os.environ.get(CRASH_HOW_ENV, "")
    if how == "pause":
        print("test hook: paused", flush=True)
        while stop.signal is None:
            time.sleep(0.01)
        return
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if how == "hang":  # SIGTERM kills it (torchrun's stop), no checkpoint
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    while how == "hang":
        time.sleep(3600)
    os._exit(1)


def _all_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in unwrap(model).state_dict().values()
               if t.is_floating_point())


def train(cfg: TrainConfig | None = None, *, resume: str | Path | None = None,
          overwrite: bool = False, allow_config_change: bool = False,
          log: Callable[[str], None] = print, progress_bar: bool | None = None) -> dict[str, Any]:
    """Train and test; return the results dictionary.

    The tested model is the best epoch by validation accuracy, or the final one when
    ``val_fraction=0`` leaves no validation split (``results["selected"]`` is ``"best"`` or
    ``"last"``).

    ``resume`` continues the run in that directory from its newest complete checkpoint (its
    saved ``config.yaml`` is used; ``cfg`` must then be None). A ``config.yaml`` edited since
    the checkpoint (other than :data:`RESUME_SAFE_KEYS`) is refused unless
    ``allow_config_change``. A new run writes ``out_dir/name`` only if it does not exist or is
    empty; ``overwrite`` replaces the run files of any existing directory.

    Raises:
        TrainingInterrupted: SIGINT/SIGTERM; a checkpoint was written first.
        TrainingDiverged: NaN/inf loss or weights; nothing was saved after the last good step.
        WorkerFailed: under torchrun, another worker died or hung.
        ConfigError, DatasetError, ShapeError, CheckpointError: bad input, before any file
            is written (or, for a checkpoint write, leaving the previous ones intact).
    """
    if resume is not None:
        run_dir = Path(resume)
        if cfg is not None:
            raise ConfigError("pass either a config or resume=RUN_DIR, not both")
        if overwrite:
            raise ConfigError("overwrite replaces a run, resume continues it; pass only one")
        check_run_directory(run_dir, resuming=True, overwrite=False)
        cfg = load_config(run_dir / "config.yaml")
    else:
        cfg = (cfg or TrainConfig()).validate()
        run_dir = Path(cfg.out_dir) / cfg.name
        # every rank checks before the process group forms, so before any rank can write
        check_run_directory(run_dir, resuming=False, overwrite=overwrite)
    dist_info = distributed.setup(cfg.device, cfg.dist_timeout_s)
    finished = False
    try:
        result = _run(cfg, run_dir, resume is not None, dist_info, log, progress_bar,
                      overwrite=overwrite, allow_config_change=allow_config_change)
        finished = True
        return result
    finally:
        with _ignore_sigterm(not finished):
            distributed.teardown(synchronize=finished)


def _run(cfg: TrainConfig, run_dir: Path, resuming: bool, dist_info: distributed.DistInfo,
         log: Callable[[str], None], progress_bar: bool | None, *, overwrite: bool = False,
         allow_config_change: bool = False) -> dict[str, Any]:
    """Set up (or resume), train every epoch, test, write ``results.json``."""
    main = dist_info.is_main
    say = log if main else (lambda _msg: None)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    if cfg.batch_size % dist_info.world_size:
        raise ConfigError(f"batch_size={cfg.batch_size} is not divisible by the "
                          f"{dist_info.world_size} processes; choose a multiple")
    ckpt = (_resume_point(cfg, run_dir, allow_config_change, main, say) if resuming
            else None)  # fails before loading data, and before anything is written
    data = _checked_data(cfg)
    run = _Run(cfg, run_dir, data, dist_info, say)
    run.start(ckpt, overwrite=overwrite)
    use_bar = (progress_bar if progress_bar is not None else sys.stderr.isatty()) and main
    with _StopFlag() as stop:
        run.stop = stop
        try:
            for epoch in range(run.progress.epoch, cfg.epochs):
                epoch_time = train_one_epoch(
                    run.net, data, run.optimizer, run.scheduler, run.scaler, run.progress,
                    cfg=cfg, epoch=epoch, steps_per_epoch=run.steps_per_epoch, info=dist_info,
                    hooks=run, progress_bar=use_bar)
                run.end_epoch(epoch, epoch_time)
                if distributed.any_rank([stop.signal is not None], dist_info)[0]:
                    raise run.interrupted(run.ckpt_dir / "last.safetensors")
            test = run.test()
        except RuntimeError as err:
            if not dist_info.distributed or isinstance(err, AttnconvError):
                raise
            raise run.worker_failed(err) from err
        if stop.signal is not None:  # arrived during the test evaluation: only that is left
            raise run.interrupted(run.ckpt_dir / "last.safetensors")
        return run.finish(test)


def _resume_point(cfg: TrainConfig, run_dir: Path, allow_config_change: bool, main: bool,
                  say: Callable[[str], None]) -> Checkpoint:
    """The checkpoint a resume starts from, once its config is checked against config.yaml
    (rank 0 also removes temporary files an interrupted write left)."""
    ckpt_dir = run_dir / "checkpoints"
    ckpt, skipped = find_newest_checkpoint(run_dir)
    changed = config_changes(ckpt.meta.get("config") or {}, cfg)
    if changed and not allow_config_change:
        raise ConfigError(
            f"{run_dir / 'config.yaml'} no longer matches its checkpoint {ckpt.path.name}: "
            f"{'; '.join(changed)}; restore config.yaml, or pass --allow-config-change to "
            f"resume with the edited values (the result is then not the run it started as)")
    if changed:
        say(f"warning: resuming with a config.yaml edited since {ckpt.path.name}: "
            f"{'; '.join(changed)}")
    if main:
        stale = remove_stale_temporaries(ckpt_dir) + remove_stale_temporaries(run_dir)
        if stale:
            say(f"removed {len(stale)} unfinished temporary file(s) left by an interrupted "
                f"write: {', '.join(p.name for p in stale)}")
    report_skipped(skipped, ckpt.path, say, set_aside=main)
    return ckpt


def _checked_data(cfg: TrainConfig) -> Data:
    """The run's data, refused when it has no test images or fewer images than one batch."""
    data = load_data(cfg)
    n_train = len(data.train[1])
    if len(data.test[1]) == 0:  # caught now, not after training
        raise ConfigError(f"the test split of dataset={cfg.dataset} holds no images; a run "
                          f"needs test images to report its accuracy")
    if n_train // cfg.batch_size == 0:
        raise ConfigError(f"batch_size={cfg.batch_size} is larger than the {n_train} training "
                          f"images; lower batch_size")
    return data


class _Run:
    """One run's state between set-up and results: the model and its optimiser, the progress,
    the last good checkpoint. Implements :class:`~attnconv.train.engine.StepHooks`."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, data: Data,
                 dist_info: distributed.DistInfo, say: Callable[[str], None]) -> None:
        self.cfg, self.run_dir, self.data, self.info, self.say = cfg, run_dir, data, dist_info, say
        self.main = dist_info.is_main
        self.ckpt_dir = run_dir / "checkpoints"
        self.n_train, self.n_val = len(data.train[1]), len(data.val[1])
        self.steps_per_epoch = self.n_train // cfg.batch_size
        self.fingerprint = data.train_fingerprint()
        num_classes = len(data.classes)
        per_rank = cfg.batch_size // dist_info.world_size
        check_fits(estimate_training_memory(lambda: build_model(cfg, num_classes, data.shape),
                                            (per_rank, *data.shape),
                                            half_precision=cfg.precision != "fp32"),
                   dist_info.device, what=f"{cfg.model} ({cfg.model_args or 'default size'})",
                   batch_size=per_rank)
        torch.manual_seed(cfg.seed)  # same initial weights on every rank
        self.model = build_model(cfg, num_classes, data.shape).to(dist_info.device)
        check_model_takes_data(self.model, cfg, data, dist_info.device)
        self.params = sum(p.numel() for p in self.model.parameters())
        self.optimizer = make_optimizer(self.model, cfg)
        self.scheduler = make_scheduler(self.optimizer, cfg, self.steps_per_epoch)
        self.scaler = (torch.amp.GradScaler(dist_info.device.type) if cfg.precision == "fp16"
                       else None)
        self.net: nn.Module = self.model
        self.progress = Progress()
        self.logs = RunLogs(run_dir, record_heads=cfg.record_heads)
        self.meta_common = {
            "config": cfg.to_dict(), "model": cfg.model, "model_args": cfg.model_args,
            "num_classes": num_classes, "classes": data.classes, "in_chans": data.shape[0],
            "image_size": list(data.shape[1:]), "dataset": cfg.dataset, "mean": data.mean,
            "std": data.std}
        self.last_good: Path | None = None
        self.where = {"epoch": 0, "step": 0}
        self.stop: _StopFlag | None = None
        self.crash_at = _crash_step(dist_info.rank)

    def start(self, ckpt: Checkpoint | None, *, overwrite: bool) -> None:
        """Restore ``ckpt`` (a resume) or prepare a new run directory; wrap the model."""
        cfg, run_dir, say = self.cfg, self.run_dir, self.say
        if ckpt is not None:
            saved = ckpt.meta.get("data", {}).get("train_sha256")
            if saved is not None and saved != self.fingerprint:
                raise CheckpointError(
                    f"the training data of {run_dir} changed since {ckpt.path} was written "
                    f"(other images or labels under dataset={cfg.dataset}, "
                    f"data_dir={cfg.data_dir}); resuming would not continue the same run: "
                    f"restore the original files or start a new run")
            restore(ckpt, self.model, self.optimizer, self.scheduler, self.scaler)
            self.progress = Progress(**ckpt.meta["progress"])
            say(f"resuming {run_dir} from {ckpt.path.name} (epoch {self.progress.epoch + 1}, "
                f"step {self.progress.step_in_epoch}/{self.steps_per_epoch})")
            if self.main:
                self.logs.resume(self.progress.epoch)
            self.last_good = ckpt.path
        elif self.main:
            if overwrite and run_dir.is_dir():
                removed = clear_run_files(run_dir)
                if removed:
                    say(f"--overwrite: removed the previous run files in {run_dir}: "
                        f"{', '.join(p.name for p in removed)}")
            run_dir.mkdir(parents=True, exist_ok=True)
            cfg.save(run_dir / "config.yaml")
            self.logs.start(self.model)
        slow = slow_precision_warning(self.info.device, cfg.precision)
        if slow is not None:
            say(slow)
        if self.n_val == 0:
            say(f"no validation split (val_fraction={cfg.val_fraction:g}): training on all "
                f"{self.n_train} training images; the final-epoch model is tested")
        if self.info.distributed:
            device = self.info.device
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)
        if cfg.compile:
            self.net = compile_model(self.net, self.info.device)
        self.where = {"epoch": self.progress.epoch, "step": self.progress.step_in_epoch}
        if ckpt is not None and self.progress.step_in_epoch == 0 and self.progress.epoch > 0 \
                and ckpt.path.name != "last.safetensors":
            # resumed from an epoch-end checkpoint other than last (a kill between writing
            # best and last): last must hold that epoch too, even if no epoch is left to run
            self.save(self.ckpt_dir / "last.safetensors")
        if self.main:
            self.logs.open_board()

    # -- StepHooks -----------------------------------------------------------------------
    def step_start(self, epoch: int, step: int) -> None:
        self.where.update(epoch=epoch, step=step)
        if self.crash_at is not None and self.progress.global_step == self.crash_at:
            assert self.stop is not None
            _crash(self.stop)  # test hook: die like a killed worker (or pause)

    def diverged(self, what: str, global_step: int) -> TrainingDiverged:
        kept = (f"the last good checkpoint {self.last_good} is intact"
                if self.last_good is not None else "no checkpoint had been written yet")
        fp32 = " or use precision=fp32" if self.cfg.precision != "fp32" else ""
        return TrainingDiverged(
            f"{what} at epoch {self.where['epoch'] + 1}, step {self.where['step']} (global step "
            f"{global_step}); training stopped and nothing was saved after it; {kept}; "
            f"lower lr (now {self.cfg.lr:g}){fp32} and start a new run")

    def step_checkpoint(self) -> Path:
        path = step_checkpoint_path(self.ckpt_dir, self.progress.global_step)
        self.save(path)
        if self.main:
            prune_step_checkpoints(self.ckpt_dir, self.cfg.keep_last)
        return path

    def stop_requested(self) -> bool:
        return self.stop is not None and self.stop.signal is not None

    def interrupted(self, saved: Path | None) -> TrainingInterrupted:
        saved = saved or self.step_checkpoint()
        signum = (self.stop.signal if self.stop is not None else None) or signal.SIGTERM
        return TrainingInterrupted(
            f"interrupted by {signal.Signals(signum).name} at epoch {self.where['epoch'] + 1}, "
            f"step {self.where['step']}; checkpoint saved to {saved}; continue with: "
            f"attnconv train --resume {self.run_dir}", signum)

    # -- checkpoints, epochs, results ----------------------------------------------------
    def save(self, path: Path) -> None:
        """Save the full state to ``path`` (rank 0 writes; every rank checks the weights)."""
        if not _all_finite(self.model):
            raise self.diverged("the weights became NaN or infinite", self.progress.global_step)
        if self.main:
            tensors, meta = capture(self.model, self.optimizer, self.scheduler, self.scaler)
            data_position = {"n_train": self.n_train, "train_sha256": self.fingerprint,
                             "epoch": self.progress.epoch,
                             "position": self.progress.step_in_epoch * self.cfg.batch_size}
            save_checkpoint(path, tensors, {**meta, **self.meta_common, "data": data_position,
                                            "progress": asdict(self.progress)})
        self.last_good = path

    def end_epoch(self, epoch: int, epoch_time: float) -> None:
        """Validate, log, update best/last after ``epoch`` (0-based) took ``epoch_time`` s."""
        cfg, data, progress = self.cfg, self.data, self.progress
        progress.train_time_s += epoch_time
        loss_sum, correct, seen = distributed.all_reduce_sum(
            [progress.loss_sum, progress.correct, progress.seen], self.info)
        # no validation split: no validation metrics (None), never a made-up 0.0
        val: dict[str, float | None] = {"loss": None, "accuracy": None}
        if self.n_val:
            val = dict(evaluate(self.model, *data.val, mean=data.mean, std=data.std,
                                batch_size=cfg.eval_batch_size, device=self.info.device,
                                precision=cfg.precision, info=self.info))
        row = {"epoch": epoch + 1, "step": progress.global_step,
               "train_loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1),
               "val_loss": val["loss"], "val_accuracy": val["accuracy"],
               "lr": self.optimizer.param_groups[0]["lr"], "epoch_time_s": epoch_time,
               "images_per_s": seen / max(epoch_time, 1e-9)}
        improved = val["accuracy"] is not None and val["accuracy"] > progress.best_val_accuracy
        if improved:
            progress.best_val_accuracy, progress.best_epoch = val["accuracy"], epoch + 1
        progress.epoch, progress.step_in_epoch = epoch + 1, 0
        progress.loss_sum = progress.correct = progress.seen = 0.0
        if self.main:
            self.logs.epoch(row, self.model)
        # best before last: a kill between the two leaves last at the previous epoch,
        # so the resumed run redoes this epoch and writes both again
        if improved:
            self.save(self.ckpt_dir / "best.safetensors")
        self.save(self.ckpt_dir / "last.safetensors")
        val_text = (f"val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.4f}"
                    if self.n_val else "no validation split")
        self.say(f"epoch {epoch + 1}/{cfg.epochs}  train loss {row['train_loss']:.4f} "
                 f"acc {row['train_accuracy']:.4f}  {val_text}  "
                 f"{row['images_per_s']:.0f} img/s")

    def test(self) -> dict[str, float]:
        """Test the best epoch by validation (without a split, the last) on every rank."""
        model = unwrap(self.model)
        if self.main and self.n_val:
            model.load_state_dict(load_checkpoint(self.ckpt_dir / "best.safetensors")
                                  .section("model"))
        if self.info.distributed:  # every rank evaluates its shard with the same weights
            for tensor in model.state_dict().values():
                torch.distributed.broadcast(tensor, src=0)
        return evaluate(self.model, *self.data.test, mean=self.data.mean, std=self.data.std,
                        batch_size=self.cfg.eval_batch_size, device=self.info.device,
                        precision=self.cfg.precision, info=self.info)

    def worker_failed(self, err: RuntimeError) -> WorkerFailed:
        """The error for a failed collective, naming the checkpoint to resume from."""
        kept = (f"the last complete checkpoint is {self.last_good}" if self.last_good is not None
                else f"the newest complete checkpoint in {self.ckpt_dir} is intact")
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return WorkerFailed(
            f"rank {self.info.rank}: a collective failed at epoch {self.where['epoch'] + 1}, "
            f"step {self.where['step']} (another worker died, or hung for more than "
            f"dist_timeout_s={self.cfg.dist_timeout_s:g} s: {first}); {kept}; continue with: "
            f"attnconv train --resume {self.run_dir}")

    def finish(self, test: dict[str, float]) -> dict[str, Any]:
        """The results dictionary (rank 0 writes ``results.json``)."""
        cfg, progress, n_val = self.cfg, self.progress, self.n_val
        result = {"name": cfg.name, "model": cfg.model, "dataset": cfg.dataset,
                  "params": self.params, "epochs": cfg.epochs,
                  "best_epoch": progress.best_epoch if n_val else None,
                  "best_val_accuracy": progress.best_val_accuracy if n_val else None,
                  "selected": "best" if n_val else "last",
                  "tested_epoch": progress.best_epoch if n_val else cfg.epochs,
                  "train_images": self.n_train, "val_images": n_val,
                  "test_accuracy": test["accuracy"], "test_loss": test["loss"],
                  "train_time_s": progress.train_time_s, "world_size": self.info.world_size,
                  "device": str(self.info.device), "precision": cfg.precision}
        if self.main:
            atomic_write_text(self.run_dir / "results.json", json.dumps(result, indent=2) + "\n")
        which = (f"best epoch {progress.best_epoch} by validation accuracy" if n_val else
                 f"final epoch {cfg.epochs}; no validation split")
        self.say(f"test accuracy {test['accuracy']:.4f} ({which}); results in "
                 f"{self.run_dir / 'results.json'}")
        return result
