"""Which checkpoint a run continues from, and the pruning of step checkpoints.

Checkpoints live in ``RUN_DIR/checkpoints``: ``last.safetensors`` (every epoch),
``best.safetensors`` (best validation accuracy) and ``step-NNNNNNNN.safetensors`` (every
``checkpoint_every_steps``, the newest ``keep_last`` kept).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from attnconv.errors import CheckpointError
from attnconv.train.checkpoint import Checkpoint, load_checkpoint, read_meta
from attnconv.train.progress import Progress

STEP_PREFIX = "step-"
PROTECTED = ("best.safetensors", "last.safetensors")  # never pruned


def step_checkpoint_path(ckpt_dir: Path, global_step: int) -> Path:
    """Where the step checkpoint of ``global_step`` is written."""
    return ckpt_dir / f"{STEP_PREFIX}{global_step:08d}.safetensors"


def step_checkpoints(ckpt_dir: Path) -> list[Path]:
    """The ``step-*.safetensors`` files of a run, oldest (lowest step) first."""
    def number(path: Path) -> int:
        digits = path.name[len(STEP_PREFIX):-len(".safetensors")]
        return int(digits) if digits.isdigit() else -1

    return sorted((p for p in ckpt_dir.glob(f"{STEP_PREFIX}*.safetensors")
                   if p.name not in PROTECTED), key=number)


def prune_step_checkpoints(ckpt_dir: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` step checkpoints; return the deleted paths.

    Only ``step-*.safetensors`` files are ever deleted: ``best.safetensors`` and
    ``last.safetensors`` are not candidates.
    """
    old = step_checkpoints(ckpt_dir)[:-keep_last] if keep_last > 0 else []
    for path in old:
        if path.name not in PROTECTED:
            path.unlink(missing_ok=True)
    return old


def newest_checkpoint(run_dir: Path, log: Callable[[str], None] = print, *,
                      set_aside: bool = False) -> Checkpoint:
    """The newest checkpoint of a run that loads cleanly, falling back to older ones.

    Candidates are ``step-*``, ``last`` and (as a last resort) ``best``, ordered by training
    progress. A corrupted or truncated one is skipped with a warning naming it; with
    ``set_aside`` a damaged step checkpoint is renamed ``NAME.corrupt`` so that it is neither
    resumed from nor counted by ``keep_last`` again.
    """
    ckpt, failures = find_newest_checkpoint(run_dir)
    report_skipped(failures, ckpt.path, log, set_aside=set_aside)
    return ckpt


def find_newest_checkpoint(run_dir: Path) -> tuple[Checkpoint, list[tuple[Path, str]]]:
    """The newest checkpoint that loads cleanly and the ``(path, reason)`` of newer damaged
    ones; reads only (see :func:`newest_checkpoint`)."""
    ckpt_dir = run_dir / "checkpoints"
    candidates = list(ckpt_dir.glob("*.safetensors"))
    if not candidates:
        raise CheckpointError(f"no checkpoint in {ckpt_dir}; nothing to resume (start the run "
                              f"without --resume)")

    def order(p: Path) -> tuple[float, int, int, float]:
        kind = {"last.safetensors": 2, "best.safetensors": 0}.get(p.name, 1)
        try:
            progress = read_meta(p)["progress"]
            mtime = p.stat().st_mtime
            return float(progress["global_step"]), int(progress["epoch"]), kind, mtime
        except (CheckpointError, KeyError, TypeError, ValueError, OSError):
            return math.inf, 0, kind, 0.0  # unreadable: tried (and reported) first

    failures: list[tuple[Path, str]] = []
    for path in sorted(candidates, key=order, reverse=True):
        try:
            ckpt = load_checkpoint(path)
            Progress(**ckpt.meta["progress"])
        except (CheckpointError, KeyError, TypeError) as err:
            reason = str(err) if isinstance(err, CheckpointError) else \
                f"{path} lacks valid progress metadata ({err})"
            failures.append((path, reason))
            continue
        return ckpt, failures
    raise CheckpointError(f"no complete checkpoint in {ckpt_dir}: "
                          + "; ".join(reason for _, reason in failures))


def report_skipped(failures: list[tuple[Path, str]], chosen: Path,
                   log: Callable[[str], None], *, set_aside: bool) -> None:
    """Warn about each damaged checkpoint skipped in favour of ``chosen``; with ``set_aside``
    rename damaged step checkpoints ``NAME.corrupt``."""
    for bad, reason in failures:
        note = ""
        if set_aside and bad.name.startswith(STEP_PREFIX):  # best/last: rewritten later
            try:
                bad.replace(bad.with_name(bad.name + ".corrupt"))
                note = f" (kept as {bad.name}.corrupt)"
            except OSError:
                pass
        log(f"warning: {reason}; resuming from the previous complete checkpoint "
            f"{chosen} instead{note}")
