"""The ``attnconv`` command line: one thin sub-command per job.

Each module in :mod:`attnconv.commands` defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``; this file discovers them, parses the command line and turns expected
errors into one-line messages (a traceback only with ``--debug``).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence
from types import ModuleType

from attnconv import __version__, commands
from attnconv.errors import AttnconvError


def _command_modules() -> list[ModuleType]:
    names = sorted(m.name for m in pkgutil.iter_modules(commands.__path__) if not m.ispkg)
    mods = [importlib.import_module(f"attnconv.commands.{name}") for name in names
            if not name.startswith("_")]
    return [m for m in mods if hasattr(m, "NAME") and hasattr(m, "run")]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    parser = argparse.ArgumentParser(
        prog="attnconv",
        description="Self-attention and convolutional layers (Cordonnier, Loukas, Jaggi, "
                    "ICLR 2020): layers, Theorem 1 as code, the paper's experiments.")
    parser.add_argument("--version", action="version", version=f"attnconv {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show full tracebacks instead of one-line error messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _command_modules():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.__doc__)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show full tracebacks instead of one-line error messages")
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``attnconv`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("attnconv: interrupted", file=sys.stderr)
        return 130
    except (AttnconvError, ValueError, TypeError, OSError, NotImplementedError) as err:
        if args.debug:
            raise
        message = _first_line(err)
        print(f"attnconv {args.command}: error: {message} (run with --debug for a traceback)",
              file=sys.stderr)
        return int(getattr(err, "exit_code", 1))  # e.g. 128 + signal for an interrupted run
    except (MemoryError, RuntimeError) as err:
        # torch.OutOfMemoryError is a RuntimeError; any other one is a bug: traceback
        if args.debug or not (isinstance(err, MemoryError) or _out_of_memory(err)):
            raise
        print(f"attnconv {args.command}: error: out of memory ({_first_line(err)}); lower "
              f"batch_size / --batch-size or the model size (run with --debug for a "
              f"traceback)", file=sys.stderr)
        return 1


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is PyTorch's out-of-memory error (CPU or GPU allocator)."""
    return type(err).__name__ == "OutOfMemoryError" or "can't allocate memory" in str(err)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
