"""Draw the paper's figures (section 5) for trained models, as PNG and PDF.

For each RUN_DIR_OR_CHECKPOINT the figures that apply to its model: quadratic encodings ->
Gaussian head centres with 50%/90% mass contours (all layers and one file per layer) and, from
heads.jsonl, the head trajectories over training; positional-only attention -> the attention of
the query pixel (centre by default) per layer and head; content attention -> the query's
attention on one test image and averaged over --images test images, over the image. Runs with
metrics.jsonl get training curves (several runs: one plot with all of them). --alpha-curve adds
the converter's error against alpha (Theorem 1). Prints the paths written.
"""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "figures"
HELP = "draw the paper's figures (heads, trajectories, attention maps, curves) as PNG + PDF"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Runs, output directory, layer, query pixel, images, alpha curve."""
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR_OR_CHECKPOINT",
                        help="run directories written by 'attnconv train' or .safetensors "
                             "checkpoints; several runs share one training-curve plot")
    parser.add_argument("--out", type=Path,
                        help="output directory (default: RUN_DIR/figures for one run, "
                             "./figures for several); with several runs each model's figures "
                             "go to a sub-directory named after its run")
    parser.add_argument("--layer", type=int,
                        help="only this attention layer (0-based, model order)")
    parser.add_argument("--query", type=int, nargs=2, metavar=("ROW", "COL"),
                        help="query pixel in tokens of the attention grid (default: centre)")
    parser.add_argument("--images", type=int, default=100,
                        help="test images to average content attention over (default 100)")
    parser.add_argument("--image", type=int, default=0,
                        help="test image of the single-image content figure (default 0)")
    parser.add_argument("--data-dir", help="directory holding the dataset files (default: the "
                                           "one the run was trained with)")
    parser.add_argument("--alpha-curve", action="store_true",
                        help="also draw the converter's error against alpha (3x3 conv)")


def _default_out(runs: list[Path]) -> Path:
    from attnconv.analysis.figures import run_directory

    if len(runs) == 1:
        run_dir = run_directory(runs[0])
        return (run_dir or runs[0].parent) / "figures"
    return Path("figures")


def run(args: argparse.Namespace) -> int:
    """Draw every figure that applies, print the paths."""
    from attnconv.analysis.figures import (
        figures_for_run,
        plot_conversion_error,
        plot_training_curves,
        run_directory,
    )

    runs = [Path(p) for p in args.runs]
    for path in runs:
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist; pass a run directory or a "
                                    f".safetensors checkpoint")
    if args.images < 1:
        raise ValueError(f"--images must be >= 1, got {args.images}")
    out: Path = args.out or _default_out(runs)
    query = tuple(args.query) if args.query else None
    paths: list[Path] = []
    for path in runs:
        target = out if len(runs) == 1 else out / (run_directory(path) or path).name
        paths += figures_for_run(path, target, layer=args.layer, query=query,
                                 images=args.images, image_index=args.image,
                                 data_dir=args.data_dir)
    if len(runs) > 1:
        with_metrics = [d for d in map(run_directory, runs)
                        if d is not None and (d / "metrics.jsonl").is_file()]
        if with_metrics:
            paths += plot_training_curves(with_metrics, out)
    if args.alpha_curve:
        paths += plot_conversion_error(out)
    for path in paths:
        print(path)
    print(f"{len(paths)} files in {out}")
    return 0
