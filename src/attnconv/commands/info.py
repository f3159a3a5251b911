"""Print versions (attnconv, torch, Python), the compute device and the thread count."""

from __future__ import annotations

import argparse
import platform

import torch

from attnconv import __version__

NAME = "info"
HELP = "print versions, device and thread count"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options."""


def describe_device() -> str:
    """A one-line description of the best available device."""
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return f"cuda ({torch.cuda.device_count()} x {', '.join(sorted(set(names)))})"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return f"cpu ({platform.processor() or platform.machine()})"


def run(args: argparse.Namespace) -> int:
    """Print one ``key: value`` line per fact."""
    rows = {
        "attnconv": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": describe_device(),
        "threads": str(torch.get_num_threads()),
    }
    width = max(map(len, rows))
    for key, value in rows.items():
        print(f"{key:<{width}}  {value}")
    return 0
