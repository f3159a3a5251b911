"""Table 1 of the paper: size and cost of each model at CIFAR-10 shape, next to the paper's.

For every model: parameters; multiply-accumulates (MACs) of one 32x32x3 image counted by
torch's FlopCounterMode over all matrix products, attention products included; FLOPs in the
paper's convention (linear and conv layers only, 2 x MACs); the paper's numbers and accuracy.
With --runs, the test accuracy of your own runs (DIR/results.json) is shown beside the paper's.
Counting runs on the meta device (shapes only, no arithmetic): a few seconds in all.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from attnconv.analysis.table1 import PAPER_TABLE1, build_table, to_markdown
from attnconv.atomic import atomic_write_text

NAME = "table1"
HELP = "parameters, MACs and FLOPs of the paper's models (Table 1), with measured accuracy"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Output format, JSON file, run directories and the models to count."""
    parser.add_argument("--format", choices=("markdown", "json"), default="markdown",
                        help="what to print on stdout (default: a Markdown table)")
    parser.add_argument("--json", type=Path, metavar="FILE",
                        help="also write the table as JSON to FILE")
    parser.add_argument("--runs", type=Path, nargs="+", metavar="DIR", default=[],
                        help="run directories holding results.json ({\"model\": NAME, "
                             "\"test_accuracy\": 0..1}); adds a measured-accuracy column")
    parser.add_argument("--models", nargs="+", metavar="NAME", default=list(PAPER_TABLE1),
                        help="registry models to count (default: the six paper models)")


def run(args: argparse.Namespace) -> int:
    """Count the models, print the table (Markdown or JSON) and optionally write JSON."""
    table = build_table(list(args.models), list(args.runs))
    text = json.dumps(table, indent=2)
    if args.json is not None:
        atomic_write_text(args.json, text + "\n")
    sys.stdout.write((text if args.format == "json" else to_markdown(table)) + "\n")
    return 0
