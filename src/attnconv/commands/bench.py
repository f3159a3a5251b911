"""Measure the exact attention algorithms against the reference and a 3x3 convolution.

Layer level (each encoding at the paper's width, 16x16 / 32x32 / 64x64 tokens) and model level
(training steps and inference per second, fp32 and bf16, peak memory), in one process, as a
Markdown table on stdout and optionally JSON. Every time is a median after warm-up; every
comparison is a ratio measured in the same run. ``--quick`` takes under 3 minutes on a 2-core
CPU. See docs/performance.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from attnconv.bench import (
    format_result,
    full_config,
    main_log,
    quick_config,
    run_bench,
    tiny_config,
    write_json,
)

NAME = "bench"
HELP = "time the fast exact attention against the reference and a conv (table + JSON)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--quick``, ``--json FILE``, ``--device``."""
    parser.add_argument("--quick", action="store_true",
                        help="fewer sizes, iterations and images (under 3 minutes on 2 cores)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results here")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where to run (default: cpu)")
    parser.add_argument("--no-compile", action="store_true",
                        help="skip the torch.compile-against-eager training row (compiling takes "
                             "minutes)")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tests


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print the table."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available; use --device cpu")
    make = tiny_config if args.tiny else quick_config if args.quick else full_config
    cfg = make(args.device)
    if args.no_compile:
        cfg.compile_models = ()
    result = run_bench(cfg, log=main_log)
    if args.json is not None:
        write_json(result, args.json)
    print(format_result(result))
    return 0
