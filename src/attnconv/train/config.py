"""Training configuration: one dataclass, read from YAML plus ``key=value`` overrides.

Unknown keys are errors with a "did you mean"; values are checked before anything runs; the
resolved configuration is saved in the run directory (``config.yaml``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from attnconv.errors import ConfigError

PRECISIONS = ("fp32", "bf16", "fp16")
SCHEDULES = ("warmup-cosine", "multistep", "constant")
DEVICES = ("auto", "cpu", "cuda", "mps")


@dataclass
class TrainConfig:
    """Everything a training run needs. Defaults are the paper's recipe (PAPER section 3)."""

    name: str = "run"
    model: str = "sa-quadratic"
    model_args: dict[str, Any] = field(default_factory=dict)
    dataset: str = "cifar10"
    data_dir: str | None = None
    val_fraction: float = 0.1
    train_subset: int | None = None  # use only the first N training images (after the split)
    augment: bool = True  # random crop (pad 4) + horizontal flip
    epochs: int = 300
    batch_size: int = 100
    eval_batch_size: int = 500
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "warmup-cosine"  # linear warm-up then cosine, stepped per optimisation step
    warmup_fraction: float = 0.05
    milestones: list[int] = field(default_factory=lambda: [80, 150, 250])  # multistep epochs
    gamma: float = 0.1
    precision: str = "fp32"
    compile: bool = False
    device: str = "auto"
    seed: int = 0
    deterministic: bool = False
    threads: int | None = None
    checkpoint_every_steps: int = 0  # 0: only at the end of every epoch
    keep_last: int = 2  # step-*.safetensors kept; last and best are never pruned
    dist_timeout_s: float = 300.0  # how long a collective waits for a dead or stuck worker
    record_heads: bool = True
    out_dir: str = "runs"

    def validate(self) -> TrainConfig:
        """Check every value; raise :class:`ConfigError` naming the key and the fix."""
        positive_ints = ("epochs", "batch_size", "eval_batch_size", "keep_last")
        for key in positive_ints:
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{key} must be a positive integer, got {value!r}")
        for key in ("lr", "momentum", "weight_decay", "gamma", "val_fraction",
                    "warmup_fraction", "dist_timeout_s"):
            value = getattr(self, key)
            if not isinstance(value, int | float) or not math.isfinite(value):
                raise ConfigError(f"{key} must be a finite number, got {value!r}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr!r} (the paper uses lr=0.1)")
        if not self.gamma > 0:
            raise ConfigError(f"gamma must be positive, got {self.gamma!r}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction!r}")
        if not 0 <= self.warmup_fraction < 1:
            raise ConfigError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction!r}")
        if not self.dist_timeout_s > 0:
            raise ConfigError(f"dist_timeout_s must be a positive number of seconds, got "
                              f"{self.dist_timeout_s!r}")
        if self.checkpoint_every_steps < 0:
            raise ConfigError("checkpoint_every_steps must be >= 0 (0 = once per epoch)")
        for key in ("train_subset", "threads"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or value <= 0):
                raise ConfigError(f"{key} must be a positive integer or null, got {value!r}")
        if not isinstance(self.name, str) or self.name.strip() in ("", ".", ".."):
            raise ConfigError(f"name must name the run directory under out_dir, got "
                              f"{self.name!r}")
        if self.data_dir is not None and not isinstance(self.data_dir, str):
            raise ConfigError(f"data_dir must be a path or null, got {self.data_dir!r}")
        if not isinstance(self.milestones, list) or not all(
                isinstance(m, int) and not isinstance(m, bool) for m in self.milestones):
            raise ConfigError(f"milestones must be a list of epochs, got {self.milestones!r}")
        for key, choices in (("precision", PRECISIONS), ("schedule", SCHEDULES),
                             ("device", DEVICES)):
            if getattr(self, key) not in choices:
                raise ConfigError(f"{key} must be one of {', '.join(choices)}, got "
                                  f"{getattr(self, key)!r}")
        if not isinstance(self.model_args, dict):
            raise ConfigError("model_args must be a mapping of model overrides")
        return self

    def to_dict(self) -> dict[str, Any]:
        """A plain dictionary (YAML/JSON-serialisable)."""
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        """Write the resolved configuration as YAML (atomically: never half a file)."""
        from attnconv.train.checkpoint import atomic_write_text

        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _unknown_key(key: str) -> ConfigError:
    close = difflib.get_close_matches(key, list(FIELDS), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(FIELDS)}"
    return ConfigError(f"unknown config key {key!r}{hint}")


def _coerce(key: str, value: Any) -> Any:
    """Check the type of one top-level value against the dataclass annotation."""
    default = FIELDS[key].default
    if value is None or default is dataclasses.MISSING or default is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
    elif isinstance(default, float):
        if isinstance(value, str):  # YAML 1.1 reads 1e6 (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        value = float(value)
    elif isinstance(default, str) and not isinstance(value, str):
        raise ConfigError(f"{key} must be a string, got {value!r}")
    return value


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Build and validate a :class:`TrainConfig` from a mapping (unknown keys are errors)."""
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in FIELDS:
            raise _unknown_key(key)
        kwargs[key] = _coerce(key, value)
    return TrainConfig(**kwargs).validate()


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``key=value`` (``value`` read as YAML; ``model_args.hidden_size=64`` nests)."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError as err:
        raise ConfigError(f"cannot parse the value of override {text!r}: {err}") from err
    return key.split("."), value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config (or the defaults when ``path`` is None) and apply overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; see configs/ for examples")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"{path} is not valid YAML: {err}") from err
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of config keys")
        data = dict(loaded or {})
    for text in overrides or []:
        keys, value = parse_override(text)
        if keys[0] not in FIELDS:
            raise _unknown_key(keys[0])
        if len(keys) == 1:
            data[keys[0]] = value
        elif keys[0] == "model_args" and len(keys) == 2:
            data.setdefault("model_args", {})
            data["model_args"] = {**data["model_args"], keys[1]: value}
        else:
            raise ConfigError(f"override {text!r}: only model_args.<name>=value nests")
    return config_from_dict(data)
