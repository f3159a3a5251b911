"""Training configuration: one dataclass, read from YAML plus ``key=value`` overrides.

Unknown keys are errors with a "did you mean"; values are checked before anything runs; the
resolved configuration is saved in the run directory (``config.yaml``). The paper's runs and the
CPU runs ship inside the package (``attnconv/configs/{paper,cpu}/*.yaml``, read with
:mod:`importlib.resources`) and are addressed by name: ``load_config("sa-quadratic")``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from attnconv.errors import ConfigError
from attnconv.suggest import closest

try:
    from importlib.resources.abc import Traversable
except ImportError:  # Python 3.10
    from importlib.abc import Traversable

PRECISIONS = ("fp32", "bf16", "fp16")
SEED_LIMIT = 2**63  # seeds are in [0, 2**63): every derived torch/numpy seed then fits
MAX_CONFIG_BYTES = 1_000_000  # a config file is a few hundred bytes; refuse anything huge
MAX_CONFIG_NODES = 100_000  # values in the loaded YAML, aliases counted where they are used
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
        check_run_name(self.name)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not (
                0 <= self.seed < SEED_LIMIT):
            raise ConfigError(f"seed must be an integer in [0, 2**63), got {self.seed!r}")
        if self.data_dir is not None and (not isinstance(self.data_dir, str)
                                          or "\0" in self.data_dir):
            raise ConfigError(f"data_dir must be a path or null, got {self.data_dir!r}")
        if not isinstance(self.out_dir, str) or not self.out_dir or "\0" in self.out_dir:
            raise ConfigError(f"out_dir must be a directory path, got {self.out_dir!r}")
        if not isinstance(self.milestones, list) or not all(
                isinstance(m, int) and not isinstance(m, bool) for m in self.milestones):
            raise ConfigError(f"milestones must be a list of epochs, got {self.milestones!r}")
        for key, choices in (("precision", PRECISIONS), ("schedule", SCHEDULES),
                             ("device", DEVICES)):
            if getattr(self, key) not in choices:
                raise ConfigError(f"{key} must be one of {', '.join(choices)}, got "
                                  f"{getattr(self, key)!r}")
        if not isinstance(self.model_args, dict) or not all(
                isinstance(k, str) for k in self.model_args):
            raise ConfigError("model_args must be a mapping of model option names to values, "
                              f"got {self.model_args!r}"[:300])
        return self

    def to_dict(self) -> dict[str, Any]:
        """A plain dictionary (YAML/JSON-serialisable)."""
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        """Write the resolved configuration as YAML (atomically: never half a file)."""
        from attnconv.atomic import atomic_write_text

        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def check_run_name(name: object) -> None:
    """A run ``name`` is one plain path component: the run directory is ``out_dir/name``.

    Raises :class:`ConfigError` for a non-string, an empty name, ``.``/``..``, a path
    separator, an absolute path or a NUL byte (the run would land outside ``out_dir``).
    """
    seps = [sep for sep in ("/", os.sep, os.altsep) if sep]
    if (not isinstance(name, str) or name.strip() in ("", ".", "..") or "\0" in name
            or any(sep in name for sep in seps) or Path(name).is_absolute()):
        raise ConfigError(f"name must name the run directory under out_dir: one plain "
                          f"directory name (no '/', not '.' or '..', not empty), got {name!r}")


def _unknown_key(key: object) -> ConfigError:
    if not isinstance(key, str):
        return ConfigError(f"config keys are names, got {key!r}; known keys: "
                           f"{', '.join(FIELDS)}")
    close = closest(key, FIELDS)
    hint = f"; did you mean {close!r}?" if close else f"; known keys: {', '.join(FIELDS)}"
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
        try:
            value = float(value)
        except OverflowError:  # an integer beyond the float range
            raise ConfigError(f"{key} must be a finite number, got an integer of "
                              f"{len(str(abs(value)))} digits") from None
    elif isinstance(default, str) and not isinstance(value, str):
        raise ConfigError(f"{key} must be a string, got {value!r}")
    return value


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Build and validate a :class:`TrainConfig` from a mapping (unknown keys are errors)."""
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if not isinstance(key, str) or key not in FIELDS:
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
        first = " ".join(str(err).split())
        raise ConfigError(f"cannot parse the value of override {text!r}: {first}") from err
    except RecursionError as err:
        raise ConfigError(f"the value of override {text[:40]!r}... is nested too deeply") from err
    return key.split("."), value


def _count_nodes(value: Any, limit: int) -> int:
    """Values in a loaded YAML document, aliases counted at every use; stops above ``limit``."""
    count, stack = 0, [value]
    while stack and count <= limit:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend(item)
    return count


def read_yaml_mapping(path: Path | Traversable) -> dict[str, Any]:
    """The mapping a YAML config file holds (``{}`` for an empty file).

    Raises :class:`ConfigError` for a file that is too large, not UTF-8, not YAML, nested too
    deeply, expands (through aliases) to too many values, or does not hold a mapping.
    """
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror or err}") from err
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path} is {len(raw):,} bytes, more than a config file can be "
                          f"({MAX_CONFIG_BYTES:,}); pass a YAML file of config keys")
    try:
        loaded = yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path} is not UTF-8 text (byte {err.start}); pass a YAML file of "
                          f"config keys") from err
    except yaml.YAMLError as err:
        first = " ".join(str(err).split())
        raise ConfigError(f"{path} is not valid YAML: {first}") from err
    except RecursionError as err:
        raise ConfigError(f"{path} is nested too deeply to be a config file") from err
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys, got "
                          f"{type(loaded).__name__}")
    if _count_nodes(loaded, MAX_CONFIG_NODES) > MAX_CONFIG_NODES:
        raise ConfigError(f"{path} expands to more than {MAX_CONFIG_NODES:,} values (YAML "
                          f"aliases?); a config file holds a few dozen")
    return dict(loaded or {})


SHIPPED_GROUPS = ("paper", "cpu")  # folders of attnconv/configs/, in listing order


@dataclass(frozen=True)
class ShippedConfig:
    """A config file shipped inside the package: ``attnconv/configs/<group>/<name>.yaml``."""

    name: str  # the file's stem, unique across groups: what --config accepts
    group: str
    resource: Traversable

    @property
    def qualified(self) -> str:
        """``group/name`` (also accepted by --config)."""
        return f"{self.group}/{self.name}"

    @property
    def description(self) -> str:
        """The file's first line, a ``#`` comment summarising the run in one line."""
        first = self.resource.read_text(encoding="utf-8").partition("\n")[0]
        return first.removeprefix("#").strip() if first.startswith("#") else ""


def shipped_configs() -> dict[str, ShippedConfig]:
    """The configs shipped in the package, by name, paper runs first, then the CPU runs."""
    root = files("attnconv") / "configs"
    found: dict[str, ShippedConfig] = {}
    for group in SHIPPED_GROUPS:
        folder = root / group
        if not folder.is_dir():
            continue
        for item in sorted(folder.iterdir(), key=lambda t: t.name):
            if item.is_file() and item.name.endswith(".yaml"):
                name = item.name.removesuffix(".yaml")
                found.setdefault(name, ShippedConfig(name, group, item))
    return found


def resolve_config(spec: str | Path) -> Path | Traversable:
    """The file ``--config SPEC`` means: an existing file wins, else a shipped config's name.

    A name is ``sa-quadratic``, ``paper/sa-quadratic`` or either with ``.yaml``. Raises
    :class:`ConfigError` with the closest shipped name when neither matches.
    """
    path = Path(spec)
    if path.is_file():
        return path
    text = str(spec)
    if "\0" in text:
        raise ConfigError(f"config {text!r} is neither a file nor a shipped config name")
    shipped = shipped_configs()
    key = text.removesuffix(".yaml")
    for config in shipped.values():
        if key in (config.name, config.qualified):
            return config.resource
    close = closest(Path(key).name, shipped) if key else None
    if path.suffix in (".yaml", ".yml") or len(path.parts) > 2:
        hint = (f"; the shipped config {close!r} has moved into the package: --config {close}"
                if close and close == Path(key).name else
                f"; did you mean the shipped config {close!r}?" if close else
                "; attnconv train --list-configs lists the shipped configs")
        raise ConfigError(f"config file {text} does not exist{hint}")
    hint = (f"did you mean {close!r}?" if close else
            "attnconv train --list-configs lists them")
    raise ConfigError(f"no config file or shipped config named {text!r}; {hint}")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config (or the defaults when ``path`` is None) and apply overrides.

    ``path`` is a YAML file or the name of a shipped config (:func:`resolve_config`).
    """
    data: dict[str, Any] = {}
    if path is not None:
        data = read_yaml_mapping(resolve_config(path))
    for text in overrides or []:
        keys, value = parse_override(text)
        if keys[0] not in FIELDS:
            raise _unknown_key(keys[0])
        if len(keys) == 1:
            data[keys[0]] = value
        elif keys[0] == "model_args" and len(keys) == 2:
            base = data.get("model_args") or {}
            if not isinstance(base, dict):
                raise ConfigError(f"override {text!r}: model_args of the config file is not "
                                  f"a mapping ({base!r})"[:300])
            data["model_args"] = {**base, keys[1]: value}
        else:
            raise ConfigError(f"override {text!r}: only model_args.<name>=value nests")
    return config_from_dict(data)
