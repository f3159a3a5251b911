"""Fixtures of the fuzz suite; the helpers themselves live in ``fuzzkit.py``.

Test modules here import strategies and settings with ``from fuzzkit import mutations,
FUZZ_SETTINGS, measure_many, memory_cap, MB`` (a plain module: ``conftest`` is not meant to be
imported). The names are re-exported below for readers of this file.

Fixtures:

* ``memory_capped`` - runs the test under :func:`fuzzkit.memory_cap` (512 MiB above the
  process's size), so an input that makes a reader allocate gigabytes fails with MemoryError.
* ``peak_memory`` - :func:`fuzzkit.measure_many`, to measure calls in a fresh process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from fuzzkit import FUZZ_SETTINGS, MB, Measured, measure_many, measure_peak, memory_cap, mutations

__all__ = ["FUZZ_SETTINGS", "MB", "Measured", "measure_many", "measure_peak", "memory_cap",
           "mutations"]


@pytest.fixture
def memory_capped() -> Iterator[None]:
    """Run the test with the address space capped at its current size plus 512 MiB."""
    with memory_cap(512 * MB):
        yield


@pytest.fixture
def peak_memory() -> Callable[..., list[Measured]]:
    """:func:`fuzzkit.measure_many`: ``peak_memory(setup, [call, ...]) -> [Measured, ...]``."""
    return measure_many
