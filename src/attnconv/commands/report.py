"""Write one report for several runs: REPORT.html (self-contained) and REPORT.md beside it.

The report holds a Table-1-style comparison of the runs (test accuracy from results.json;
parameters, MACs and paper-convention FLOPs counted at each run's own image shape; the paper's
CIFAR-10 accuracy of the same model), the training curves of all runs on one plot, each run's
figures (attnconv figures), the per-layer locality of its attention (attnconv locality) and a
link to its attention explorer (attnconv explore; written with --explorer, else an existing
RUN_DIR/explorer.html is linked). Figures are embedded in the HTML as PNG and written as
PNG + PDF to REPORT-figures/ beside it, where the Markdown links them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "report"
HELP = "write an HTML + Markdown report of several runs (table, figures, locality, explorer)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Runs, output file, images, explorer options, data directory."""
    from attnconv.analysis.report import DEFAULT_EXPLORER_IMAGES, DEFAULT_IMAGES

    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR",
                        help="finished run directories written by 'attnconv train'")
    parser.add_argument("--out", type=Path, default=Path("report.html"),
                        help="the HTML report (default report.html); the .md goes beside it")
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGES,
                        help=f"test images for content-attention figures and locality "
                             f"(default {DEFAULT_IMAGES})")
    parser.add_argument("--explorer", action="store_true",
                        help="also write an explorer page per self-attention run "
                             "(explorer-RUN.html beside the report) and link it")
    parser.add_argument("--explorer-images", type=int, default=DEFAULT_EXPLORER_IMAGES,
                        help=f"test images in each explorer page (default "
                             f"{DEFAULT_EXPLORER_IMAGES})")
    parser.add_argument("--data-dir", help="directory holding the dataset files (default: the "
                                           "one each run was trained with)")


def run(args: argparse.Namespace) -> int:
    """Write the report, print the files."""
    from attnconv.analysis.report import write_report

    for path in args.runs:
        if not path.is_dir():
            raise FileNotFoundError(f"{path} is not a run directory (written by 'attnconv "
                                    f"train', with results.json)")
    if args.images < 1 or args.explorer_images < 1:
        raise ValueError("--images and --explorer-images must be >= 1")
    report = write_report(args.runs, args.out, images=args.images, explorer=args.explorer,
                          explorer_images=args.explorer_images, data_dir=args.data_dir)
    for page in report.explorers.values():
        print(f"explorer: {page}")
    print(f"markdown: {report.markdown}")
    print(f"report: {report.html}")
    return 0
