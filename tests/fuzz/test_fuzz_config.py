"""Fuzzing the training-config loader: hostile YAML files and overrides.

Every input goes through :func:`attnconv.train.config.load_config`, the path of
``attnconv train --config FILE key=value ...``. Whatever the input (bit flips, truncation,
insertions, random text, wrong types, huge or non-finite numbers, YAML tags, aliases that
expand or refer to themselves), the loader either returns a validated config, which can be
saved and read back unchanged, or raises :class:`ConfigError`; nothing else escapes, and each
case finishes within ``CASE_LIMIT_S`` seconds and 512 MiB more address space.
"""

from __future__ import annotations

import contextlib
import math
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from fuzzkit import FUZZ_SETTINGS, MB, memory_cap, mutations
from hypothesis import given
from hypothesis import strategies as st

from attnconv.errors import ConfigError
from attnconv.train.config import FIELDS, TrainConfig, load_config, shipped_configs

SHIPPED = [config.resource for config in shipped_configs().values()]
CASE_LIMIT_S = 20  # a generous bound: a case normally takes milliseconds
SEEDS = [path.read_bytes() for path in SHIPPED] + [
    yaml.safe_dump(TrainConfig().to_dict(), sort_keys=False).encode()]


class CaseTooSlow(Exception):
    """A single fuzz case ran past CASE_LIMIT_S."""


@contextlib.contextmanager
def bounded(seconds: float = CASE_LIMIT_S) -> Iterator[None]:
    """Fail a case that runs longer than ``seconds`` (SIGALRM) or allocates more than 512 MiB
    above the current address space (MemoryError)."""
    def expire(_signum: int, _frame: object) -> None:
        raise CaseTooSlow(f"a config case ran for more than {seconds} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        with memory_cap(512 * MB):
            yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def check_loads_or_refuses(text: bytes, overrides: list[str] | None = None) -> None:
    """Load ``text`` as a config file: a valid config that round-trips, or ConfigError."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_bytes(text)
        with bounded():
            try:
                cfg = load_config(path, overrides)
            except ConfigError as err:
                message = str(err)
                assert message.strip() and "\n" not in message, message  # one line for the CLI
                return
            assert isinstance(cfg, TrainConfig)
            cfg.validate()  # idempotent on what it returned
            saved = Path(tmp) / "saved.yaml"
            cfg.save(saved)
            again = load_config(saved)
            dump = yaml.safe_dump(cfg.to_dict(), sort_keys=True)
            assert yaml.safe_dump(again.to_dict(), sort_keys=True) == dump


needs_alarm = pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs SIGALRM")


@needs_alarm
@FUZZ_SETTINGS
@given(data=st.data())
def test_mutated_config_files(data: st.DataObject) -> None:
    """Bit flips, truncation, insertion, deletion, duplication of shipped configs."""
    seed = data.draw(st.sampled_from(SEEDS))
    check_loads_or_refuses(data.draw(mutations(seed, header=len(seed))))


@needs_alarm
@FUZZ_SETTINGS
@given(text=st.one_of(st.text(max_size=400), st.binary(max_size=400)))
def test_random_text_and_bytes(text: str | bytes) -> None:
    check_loads_or_refuses(text.encode("utf-8", "surrogatepass") if isinstance(text, str)
                           else text)


HOSTILE_SCALARS = [
    "null", "~", "true", "no", "''", "'0'", "0", "-1", "1e6", "1e400", "-1e400", ".nan", ".inf",
    "-.inf", str(2**63), str(-(2**63) - 1), "1" + "0" * 400, "0x7fffffffffffffffffff",
    "0o777", "1_000", "12:30:00", "2001-12-14", "!!binary aGVsbG8=", "!!float nan",
    "!!int 1", "!!str 5", "!!timestamp 2001-12-14t21:59:43.10-05:00",
    "!!python/object/apply:os.system ['true']", "!!python/name:os.system",
    "!!set {a, b}", "!!omap [a: 1]", "!!pairs [a: 1, a: 2]", "[]", "{}", "[1, [2, [3]]]",
    "{a: {b: {c: d}}}", "'\\0'", "\"\\0\"", "\"a/b\"", "\"../..\"", "'/etc'", "'\\ud800'",
    "&x [*x]", "*undefined", "|\n  block\n", ">-\n  folded\n", "'" + "x" * 5000 + "'",
]
# one level of nesting for model_args and milestones as well
VALUES = st.one_of(st.sampled_from(HOSTILE_SCALARS),
                   st.builds(lambda v: f"[{v}]", st.sampled_from(HOSTILE_SCALARS)),
                   st.builds(lambda k, v: f"{{{k}: {v}}}",
                             st.sampled_from(["hidden_size", "heads", "1", "null", "[1]"]),
                             st.sampled_from(HOSTILE_SCALARS)))
KEYS = st.one_of(st.sampled_from(sorted(FIELDS)),
                 st.sampled_from(["learning_rate", "1", "null", "''", "[a]", "<<", "? [1]"]))


@needs_alarm
@FUZZ_SETTINGS
@given(entries=st.lists(st.tuples(KEYS, VALUES), min_size=1, max_size=6),
       base=st.sampled_from(SEEDS))
def test_wrong_types_huge_numbers_and_tags(entries: list[tuple[str, str]], base: bytes) -> None:
    """A valid config with keys set to values of the wrong type, huge or non-finite numbers,
    YAML tags (including the python/* ones safe_load refuses) and self-referring aliases."""
    extra = "".join(f"{key}: {value}\n" if "\n" not in value else f"{key}: {value}"
                    for key, value in entries)
    check_loads_or_refuses(base + b"\n" + extra.encode("utf-8", "surrogatepass"))


@needs_alarm
@FUZZ_SETTINGS
@given(overrides=st.lists(st.one_of(
    st.builds(lambda k, v: f"{k}={v}",
              st.sampled_from([*sorted(FIELDS), "model_args.heads", "model_args", "x.y.z", ""]),
              st.sampled_from(HOSTILE_SCALARS)),
    st.text(max_size=40)), max_size=4))
def test_hostile_overrides(overrides: list[str]) -> None:
    """``key=value`` command-line overrides on top of a shipped config."""
    check_loads_or_refuses(SEEDS[0], overrides)


def test_accepted_numbers_are_finite() -> None:
    """The property the fuzzers lean on: what loads is validated (no inf/NaN, seeds in
    range), checked here on the values most likely to slip through."""
    for text, ok in [("lr: 1e6\n", True), ("lr: 1e400\n", False), ("seed: 9223372036854775807\n",
                                                                   True),
                     ("seed: 9223372036854775808\n", False), ("epochs: 1e3\n", False)]:
        try:
            cfg = load_config(None, [text.strip().replace(": ", "=", 1)])
        except ConfigError:
            assert not ok, text
            continue
        assert ok, text
        assert all(math.isfinite(v) for v in (cfg.lr, cfg.momentum, cfg.weight_decay))
