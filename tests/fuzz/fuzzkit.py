"""Shared helpers of the fuzz suite: input mutations and peak-memory measurement.

Import them in a test module of this directory with ``from fuzzkit import ...`` (pytest puts
``tests/fuzz`` on ``sys.path``; ``tests/fuzz/conftest.py`` re-exports the same names and
wraps the measurement as fixtures).

* :func:`mutations` - a hypothesis strategy turning valid bytes into hostile variants (bit
  flips, truncation, insertion, deletion, duplicated runs, random or extreme header bytes).
* :data:`FUZZ_SETTINGS` - the deterministic, CI-friendly hypothesis settings of the suite.
* :func:`measure_peak` / :func:`measure_many` - run calls in a fresh process and report the
  exception they end in and by how much each raised the peak resident memory (``ru_maxrss``),
  under an address-space cap so a blow-up fails fast instead of exhausting the machine.
* :func:`memory_cap` - the same cap for code run in the test process itself.
"""

from __future__ import annotations

import contextlib
import json
import resource
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

MB = 1 << 20

#: Settings every fuzz test uses: reproducible in CI, no per-example deadline, few examples.
FUZZ_SETTINGS = settings(
    max_examples=60, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

_EXTREME_WORDS = (0, 1, 0x7F, 0x80, 0xFF, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF)


@st.composite
def mutations(draw: st.DrawFn, data: bytes, header: int = 64) -> bytes:
    """A hostile variant of ``data``: one to three random edits, each one of

    bit flip, truncation, insertion of random bytes, deletion of a run, duplication of a run,
    overwrite of a byte in the first ``header`` bytes, or an extreme 32-bit word (0, 2**31,
    2**32 - 1...) written big- or little-endian into the header (sizes, counts, dimensions).
    """
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(
            ("flip", "truncate", "insert", "delete", "duplicate", "header", "word")))
        n = len(out)
        if kind == "flip" and n:
            i = draw(st.integers(0, n - 1))
            out[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del out[draw(st.integers(0, n)):]
        elif kind == "insert":
            i = draw(st.integers(0, n))
            out[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete" and n:
            i = draw(st.integers(0, n - 1))
            del out[i:i + draw(st.integers(1, 64))]
        elif kind == "duplicate" and n:
            i = draw(st.integers(0, n - 1))
            out[i:i] = out[i:i + draw(st.integers(1, 64))]
        elif kind == "header" and n:
            out[draw(st.integers(0, min(n, header) - 1))] = draw(st.integers(0, 255))
        elif kind == "word" and n >= 4:
            i = draw(st.integers(0, min(n, header) - 4))
            word = draw(st.sampled_from(_EXTREME_WORDS))
            out[i:i + 4] = word.to_bytes(4, draw(st.sampled_from(("big", "little"))))
    return bytes(out)


@dataclass(frozen=True)
class Measured:
    """How one measured call ended.

    Attributes:
        error: ``"module.QualName"`` of the exception it raised, or None if it returned.
        message: ``str()`` of that exception ("" if it returned).
        rise: bytes by which the call raised the peak resident memory of its process.
    """

    error: str | None
    message: str
    rise: int

    @property
    def rise_mb(self) -> float:
        """:attr:`rise` in MiB."""
        return self.rise / MB


_DRIVER = textwrap.dedent("""
    import json, os, resource, sys, traceback
    spec = json.loads(sys.argv[1])
    exec(spec["setup"])
    def vm_size():
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize:"))
    out = []
    for call in spec["calls"]:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            cap = vm_size() + spec["cap"]
            resource.setrlimit(resource.RLIMIT_AS, (cap, resource.getrlimit(resource.RLIMIT_AS)[1]))
            base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            try:
                eval(call)
                error, message = None, ""
            except BaseException as e:
                error = type(e).__module__ + "." + type(e).__qualname__
                message = str(e)[:2000]
            rise = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024
            os.write(write, json.dumps([error, message, rise]).encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as pipe:
            data = pipe.read()
        os.waitpid(pid, 0)
        out.append(json.loads(data) if data else ["<child died>", "", -1])
    print(json.dumps(out))
""")


def measure_many(setup: str, calls: Sequence[str], cap: int = 1024 * MB,
                 timeout: float = 120) -> list[Measured]:
    """Run each expression of ``calls`` in a fork of one fresh interpreter that ran ``setup``.

    ``setup`` (statements: imports, helper definitions) runs once; each call then runs in its
    own forked child, whose peak resident memory is compared before and after the call (a
    fork starts with the parent's current resident size as its peak, so the difference is
    what the call itself added). Each child's address space is capped at its size at the
    fork plus ``cap`` bytes: an allocation beyond it raises MemoryError instead of eating the
    machine's memory.
    """
    spec = json.dumps({"setup": setup, "calls": list(calls), "cap": cap})
    done = subprocess.run([sys.executable, "-c", _DRIVER, spec], capture_output=True,
                          text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"measurement driver failed:\n{done.stderr[-4000:]}")
    return [Measured(*row) for row in json.loads(done.stdout.strip().splitlines()[-1])]


def measure_peak(setup: str, call: str, cap: int = 1024 * MB) -> Measured:
    """:func:`measure_many` for a single call."""
    return measure_many(setup, [call], cap)[0]


def _vm_size() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))


@contextlib.contextmanager
def memory_cap(extra: int = 512 * MB) -> Iterator[None]:
    """Cap this process's address space at its current size plus ``extra`` bytes, then restore.

    Inside, an allocation beyond the cap raises MemoryError, so a fuzz example that tries to
    allocate far more than its input justifies fails the test instead of the machine.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = _vm_size() + extra
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
