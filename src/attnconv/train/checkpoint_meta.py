"""What a checkpoint's JSON metadata may hold: the schema of every known key and the
cross-checks between redundant fields (step, epoch, data position, learning rate...).

:func:`validate_meta` runs on every load (and save) before anything is built from the
metadata, so a hand-edited or foreign file fails with one :class:`CheckpointError` naming the
file and the key instead of a traceback, an absurd allocation, or -- worse -- a run that
resumes silently from the wrong place. Unknown keys are allowed (e.g. ``pruned_from``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from attnconv.errors import CheckpointError

if TYPE_CHECKING:
    from attnconv.train.config import TrainConfig

#: Lower bounds of the ``Progress`` fields that may be negative (-1: nothing yet).
PROGRESS_LOWER = {"best_epoch": -1, "best_val_accuracy": -1.0}
#: Keys ``load_model`` / ``attnconv eval`` need to rebuild and evaluate the model.
MODEL_KEYS = ("model", "model_args", "num_classes", "in_chans", "image_size", "dataset",
              "mean", "std", "config")
#: Keys a resumable checkpoint (one with ``progress``) needs besides the model keys.
RESUME_KEYS = ("progress", "rng")
#: Keys needed once a run has taken a step: where it is in the data, and the optimiser.
STARTED_KEYS = ("data", "optimizer", "scheduler")

MAX_COUNT = 2 ** 53  # steps, epochs, images: beyond this no run has gone
MAX_CLASSES = 100_000
MAX_CHANNELS = 4096
MAX_SIDE = 4096  # image height / width
MAX_MODEL_INT = 65_536  # any integer in model_args (widths, heads, layers)
_MT_WORDS = 624  # Mersenne Twister state words (Python and NumPy)
_HEX64 = re.compile(r"[0-9a-f]{64}")


class _Check:
    """Type and range checks that raise one CheckpointError naming the file and the key."""

    def __init__(self, path: Path | str) -> None:
        self.path = path

    def fail(self, key: str, problem: str) -> NoReturn:
        raise CheckpointError(f"{self.path} has invalid metadata {key}: {problem}; the file "
                              f"was not written by 'attnconv train' or was edited: use another "
                              f"checkpoint")

    def inconsistent(self, what: str) -> NoReturn:
        raise CheckpointError(f"{self.path} has inconsistent metadata: {what}; the file was "
                              f"edited or damaged: use another checkpoint")

    def dict_(self, value: Any, key: str, keys: Iterable[str] = ()) -> dict[str, Any]:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            self.fail(key, f"expected a mapping, got {_short(value)}")
        missing = [k for k in keys if k not in value]
        if missing:
            self.fail(f"{key}.{missing[0]}", "missing")
        return value

    def list_(self, value: Any, key: str, length: int | None = None) -> list[Any]:
        if not isinstance(value, list):
            self.fail(key, f"expected a list, got {_short(value)}")
        if length is not None and len(value) != length:
            self.fail(key, f"expected {length} entries, got {len(value)}")
        return value

    def int_(self, value: Any, key: str, lo: int = 0, hi: int = MAX_COUNT) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            self.fail(key, f"expected an integer, got {_short(value)}")
        if not lo <= value <= hi:
            self.fail(key, f"{value} is outside [{lo}, {hi}]")
        return value

    def num(self, value: Any, key: str, lo: float = -math.inf, hi: float = math.inf) -> float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            self.fail(key, f"expected a number, got {_short(value)}")
        if not math.isfinite(value) or not lo <= value <= hi:
            self.fail(key, f"{value} is not a finite number in [{lo}, {hi}]")
        return float(value)

    def str_(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value:
            self.fail(key, f"expected a non-empty string, got {_short(value)}")
        return value


def _short(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"


def _model_args(c: _Check, value: Any, key: str) -> None:
    """JSON values whose integers are sizes a model can have."""
    if isinstance(value, dict):
        c.dict_(value, key)
        for k, v in value.items():
            _model_args(c, v, f"{key}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _model_args(c, v, f"{key}[{i}]")
    elif isinstance(value, int) and not isinstance(value, bool):
        c.int_(value, key, -MAX_MODEL_INT, MAX_MODEL_INT)
    elif isinstance(value, float):
        c.num(value, key)
    elif value is not None and not isinstance(value, str | bool):
        c.fail(key, f"unexpected {_short(value)}")


def _rng(c: _Check, value: Any) -> None:
    rng = c.dict_(value, "rng", ("python", "numpy"))
    version, internal, gauss = c.list_(rng["python"], "rng.python", 3)
    c.int_(version, "rng.python[0]", 3, 3)
    words = c.list_(internal, "rng.python[1]", _MT_WORDS + 1)
    for i, w in enumerate(words[:-1]):
        c.int_(w, f"rng.python[1][{i}]", 0, 2 ** 32 - 1)
    c.int_(words[-1], f"rng.python[1][{_MT_WORDS}]", 0, _MT_WORDS)
    if gauss is not None:
        c.num(gauss, "rng.python[2]")
    name, keys, pos, has_gauss, cached = c.list_(rng["numpy"], "rng.numpy", 5)
    if name != "MT19937":
        c.fail("rng.numpy[0]", f"expected 'MT19937', got {_short(name)}")
    for i, w in enumerate(c.list_(keys, "rng.numpy[1]", _MT_WORDS)):
        c.int_(w, f"rng.numpy[1][{i}]", 0, 2 ** 32 - 1)
    # format 1 wrote these two as floats
    if c.num(pos, "rng.numpy[2]", 0, _MT_WORDS) % 1:
        c.fail("rng.numpy[2]", f"expected an integer, got {pos!r}")
    if c.num(has_gauss, "rng.numpy[3]", 0, 1) % 1:
        c.fail("rng.numpy[3]", f"expected 0 or 1, got {has_gauss!r}")
    c.num(cached, "rng.numpy[4]")


def _optimizer(c: _Check, value: Any) -> None:
    opt = c.dict_(value, "optimizer", ("param_groups", "state"))
    groups = c.list_(opt["param_groups"], "optimizer.param_groups")
    if not groups:
        c.fail("optimizer.param_groups", "empty")
    seen: set[int] = set()
    for i, group in enumerate(groups):
        key = f"optimizer.param_groups[{i}]"
        c.dict_(group, key, ("params", "lr"))
        c.num(group["lr"], f"{key}.lr", 0.0)
        for name in ("momentum", "weight_decay", "initial_lr"):
            if name in group:
                c.num(group[name], f"{key}.{name}", 0.0)
        for j, p in enumerate(c.list_(group["params"], f"{key}.params")):
            c.int_(p, f"{key}.params[{j}]", 0, MAX_COUNT)
            if p in seen:
                c.fail(f"{key}.params[{j}]", f"parameter {p} is in two groups")
            seen.add(p)
    for idx, entry in c.dict_(opt["state"], "optimizer.state").items():
        if not idx.isdigit() or int(idx) not in seen:
            c.fail(f"optimizer.state.{idx}", "not the index of an optimised parameter")
        c.dict_(entry, f"optimizer.state.{idx}")


def _scheduler(c: _Check, value: Any) -> None:
    sched = c.dict_(value, "scheduler", ("last_epoch",))
    c.int_(sched["last_epoch"], "scheduler.last_epoch", -1)
    for name in ("base_lrs", "_last_lr"):
        if name in sched:
            for i, lr in enumerate(c.list_(sched[name], f"scheduler.{name}")):
                c.num(lr, f"scheduler.{name}[{i}]", 0.0)


def progress_fields() -> dict[str, str]:
    """Name -> ``"int"`` or ``"float"`` of every field of the trainer's ``Progress``."""
    import dataclasses

    from attnconv.train.progress import Progress

    return {f.name: str(f.type) for f in dataclasses.fields(Progress)}


def _progress(c: _Check, value: Any) -> None:
    fields = progress_fields()
    progress = c.dict_(value, "progress", fields)
    extra = sorted(set(progress) - set(fields))
    if extra:
        c.fail(f"progress.{extra[0]}", "unknown field")
    for name, kind in fields.items():
        lo = PROGRESS_LOWER.get(name, 0)
        if kind == "int":
            c.int_(progress[name], f"progress.{name}", int(lo))
        else:
            c.num(progress[name], f"progress.{name}", lo)
    c.num(progress["best_val_accuracy"], "progress.best_val_accuracy", -1.0, 1.0)


def _data(c: _Check, value: Any) -> None:
    data = c.dict_(value, "data", ("n_train", "train_sha256", "epoch", "position"))
    c.int_(data["n_train"], "data.n_train", 1)
    c.int_(data["epoch"], "data.epoch")
    c.int_(data["position"], "data.position")
    if not isinstance(data["train_sha256"], str) or not _HEX64.fullmatch(data["train_sha256"]):
        c.fail("data.train_sha256", f"expected 64 hex digits, got {_short(data['train_sha256'])}")


def _config(c: _Check, value: Any) -> TrainConfig:
    from attnconv.errors import ConfigError
    from attnconv.train.config import config_from_dict

    c.dict_(value, "config")
    try:
        return config_from_dict(value)
    except (ConfigError, TypeError, ValueError) as err:
        c.fail("config", str(err))


def _sections(c: _Check, meta: Mapping[str, Any]) -> TrainConfig | None:
    """Type and range of every known key that is present; the resolved config if any."""
    cfg = _config(c, meta["config"]) if "config" in meta else None
    for key in ("model", "dataset"):
        if key in meta:
            c.str_(meta[key], key)
    if "model_args" in meta:
        _model_args(c, c.dict_(meta["model_args"], "model_args"), "model_args")
    if "num_classes" in meta:
        c.int_(meta["num_classes"], "num_classes", 1, MAX_CLASSES)
    if "in_chans" in meta:
        c.int_(meta["in_chans"], "in_chans", 1, MAX_CHANNELS)
    if "image_size" in meta:
        for i, side in enumerate(c.list_(meta["image_size"], "image_size", 2)):
            c.int_(side, f"image_size[{i}]", 1, MAX_SIDE)
    if "classes" in meta:
        for i, name in enumerate(c.list_(meta["classes"], "classes")):
            if not isinstance(name, str):
                c.fail(f"classes[{i}]", f"expected a string, got {_short(name)}")
    for key in ("mean", "std"):
        if key in meta:
            for i, v in enumerate(c.list_(meta[key], key)):
                c.num(v, f"{key}[{i}]", 1e-12 if key == "std" else -math.inf)
    for key, check in (("rng", _rng), ("optimizer", _optimizer), ("scheduler", _scheduler),
                       ("progress", _progress), ("data", _data)):
        if key in meta:
            check(c, meta[key])
    if "scaler" in meta:
        scaler = c.dict_(meta["scaler"], "scaler", ("scale",))
        c.num(scaler["scale"], "scaler.scale", 1e-30)
    return cfg


def _required(c: _Check, meta: Mapping[str, Any]) -> None:
    """A checkpoint with ``progress`` must hold everything a resume restores."""
    if "progress" not in meta:
        return
    for key in MODEL_KEYS + RESUME_KEYS:
        if key not in meta:
            c.fail(key, "missing (a resumable checkpoint needs it)")
    progress = meta["progress"]
    if progress["global_step"] or progress["epoch"]:
        for key in STARTED_KEYS:
            if key not in meta:
                c.fail(key, f"missing (needed after global step {progress['global_step']})")


def _cross_check(c: _Check, meta: Mapping[str, Any], cfg: TrainConfig | None) -> None:
    """Redundant fields agree with each other."""
    if cfg is not None:
        for key in ("model", "model_args", "dataset"):
            if key in meta and meta[key] != getattr(cfg, key):
                c.inconsistent(f"{key}={_short(meta[key])} but config.{key}="
                               f"{_short(getattr(cfg, key))}")
    if "classes" in meta and "num_classes" in meta and len(meta["classes"]) != meta[
            "num_classes"]:
        c.inconsistent(f"num_classes={meta['num_classes']} but classes lists "
                       f"{len(meta['classes'])}")
    for key in ("mean", "std"):
        if key in meta and "in_chans" in meta and len(meta[key]) != meta["in_chans"]:
            c.inconsistent(f"in_chans={meta['in_chans']} but {key} has {len(meta[key])} "
                           f"entries")
    if "progress" in meta and cfg is not None:
        _cross_check_progress(c, meta, cfg)
    _cross_check_lr(c, meta)


def _cross_check_progress(c: _Check, meta: Mapping[str, Any], cfg: TrainConfig) -> None:
    p = meta["progress"]
    epoch, step, global_step = p["epoch"], p["step_in_epoch"], p["global_step"]
    if p["best_epoch"] > epoch:
        c.inconsistent(f"progress.best_epoch={p['best_epoch']} is after progress.epoch={epoch}")
    if (p["best_epoch"] == -1) != (p["best_val_accuracy"] == -1):
        c.inconsistent(f"progress.best_epoch={p['best_epoch']} but progress.best_val_accuracy="
                       f"{p['best_val_accuracy']} (both are -1 before the first epoch ends)")
    if p["correct"] > p["seen"]:
        c.inconsistent(f"progress.correct={p['correct']} > progress.seen={p['seen']}")
    if (p["seen"] == 0) != (step == 0):
        c.inconsistent(f"progress.seen={p['seen']} but progress.step_in_epoch={step}")
    if "data" in meta:
        _cross_check_data(c, meta, cfg)
    elif global_step or epoch or step:  # only a run that has not started has no data position
        c.fail("data", "missing (needed after global step 0)")
    if "scheduler" in meta and meta["scheduler"]["last_epoch"] != global_step:
        c.inconsistent(f"scheduler.last_epoch={meta['scheduler']['last_epoch']} but "
                       f"progress.global_step={global_step} (the schedule steps once per step)")


def _cross_check_data(c: _Check, meta: Mapping[str, Any], cfg: TrainConfig) -> None:
    """Progress counters against the data position, the data size and the batch size."""
    p = meta["progress"]
    epoch, step, global_step = p["epoch"], p["step_in_epoch"], p["global_step"]
    data, batch = meta["data"], cfg.batch_size
    per_epoch = data["n_train"] // batch
    if per_epoch < 1:
        c.inconsistent(f"data.n_train={data['n_train']} < config.batch_size={batch}")
    if step > per_epoch:
        c.inconsistent(f"progress.step_in_epoch={step} > {per_epoch} steps per epoch "
                       f"(data.n_train // config.batch_size = {data['n_train']} // {batch})")
    if global_step != epoch * per_epoch + step:
        c.inconsistent(f"progress.global_step={global_step} but progress.epoch * steps per "
                       f"epoch + progress.step_in_epoch = {epoch} * {per_epoch} + {step} = "
                       f"{epoch * per_epoch + step} (steps per epoch = data.n_train // "
                       f"config.batch_size = {data['n_train']} // {batch})")
    if data["epoch"] != epoch:
        c.inconsistent(f"data.epoch={data['epoch']} but progress.epoch={epoch}")
    if data["position"] != step * batch:
        c.inconsistent(f"data.position={data['position']} but progress.step_in_epoch * "
                       f"config.batch_size = {step} * {batch} = {step * batch}")
    if p["seen"] > step * batch:
        c.inconsistent(f"progress.seen={p['seen']} > progress.step_in_epoch * "
                       f"config.batch_size = {step * batch}")
    epochs = cfg.epochs
    if epoch > epochs or (epoch == epochs and step):
        c.inconsistent(f"progress.epoch={epoch}, progress.step_in_epoch={step} is past "
                       f"config.epochs={epochs}")


def _cross_check_lr(c: _Check, meta: Mapping[str, Any]) -> None:
    """The optimiser's learning rates are the scheduler's."""
    if "optimizer" not in meta or "scheduler" not in meta:
        return
    groups, sched = meta["optimizer"]["param_groups"], meta["scheduler"]
    for name, group_key in (("_last_lr", "lr"), ("base_lrs", "initial_lr")):
        if name not in sched:
            continue
        if len(sched[name]) != len(groups):
            c.inconsistent(f"scheduler.{name} has {len(sched[name])} entries but the optimiser "
                           f"has {len(groups)} parameter groups")
        for i, (lr, group) in enumerate(zip(sched[name], groups, strict=True)):
            if group_key in group and group[group_key] != lr:
                c.inconsistent(f"optimizer.param_groups[{i}].{group_key}={group[group_key]} "
                               f"but scheduler.{name}[{i}]={lr}")


def validate_meta(meta: Any, path: Path | str) -> None:
    """Check the types, ranges, presence and mutual consistency of a checkpoint's metadata.

    Raises:
        CheckpointError: naming ``path`` and the offending key (or the disagreeing keys).
    """
    c = _Check(path)
    if not isinstance(meta, dict):
        c.fail("(top level)", f"expected a mapping, got {_short(meta)}")
    try:
        cfg = _sections(c, meta)
    except RecursionError:
        c.fail("(nesting)", "nested too deeply")
    _required(c, meta)
    _cross_check(c, meta, cfg)


def require_keys(meta: Mapping[str, Any], keys: Iterable[str], path: Path | str,
                 purpose: str) -> None:
    """Raise :class:`CheckpointError` naming the first of ``keys`` missing from ``meta``."""
    for key in keys:
        if key not in meta:
            raise CheckpointError(f"{path} lacks the metadata {key!r} needed to {purpose}; "
                                  f"pass a checkpoint written by 'attnconv train'")
