"""Write an interactive attention explorer: one self-contained HTML page (no server, no network).

Pick one of the first --images test images (shown with its true and predicted class), a layer
and a head, or all heads as a grid; hover or click a query pixel to see its attention as a heat
map over the image; arrow keys move the query (i/l/h change image, layer, head; a: all heads;
v: full or positional-only). Layers with content attention offer both the full attention and
the softmax of their positional term alone. Maps are stored as uint8 per probability (relative
to the largest of its query row); when the page would exceed --max-mb, the per-image maps keep
only the most attended keys of each query, and the page says how many and how much mass.
"""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "explore"
HELP = "write an interactive HTML page to explore what each attention head attends to"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Checkpoint, images, output file, size limit, data directory."""
    from attnconv.analysis.explorer import DEFAULT_IMAGES, DEFAULT_MAX_MB

    parser.add_argument("checkpoint", metavar="CHECKPOINT_OR_RUN_DIR",
                        help="a .safetensors checkpoint or a run directory (its best checkpoint)")
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGES,
                        help=f"test images to include, the first ones of the test set "
                             f"(default {DEFAULT_IMAGES})")
    parser.add_argument("--out", type=Path,
                        help="the HTML file to write (default: RUN_DIR/explorer.html, or "
                             "explorer.html beside the checkpoint)")
    parser.add_argument("--max-mb", type=float, default=DEFAULT_MAX_MB,
                        help=f"page size limit in MB (default {DEFAULT_MAX_MB:g}); above it "
                             f"per-image maps keep only the most attended keys; 0: no limit")
    parser.add_argument("--data-dir", help="directory holding the dataset files (default: the "
                                           "one the run was trained with)")
    parser.add_argument("--batch-size", type=int, default=10, help="images per forward pass")


def run(args: argparse.Namespace) -> int:
    """Build the page, print its path, size and how the maps are stored."""
    from attnconv.analysis.explorer import build_explorer
    from attnconv.analysis.figures import run_directory

    source = Path(args.checkpoint)
    if not source.exists():
        raise FileNotFoundError(f"{source} does not exist; pass a run directory or a "
                                f".safetensors checkpoint")
    if args.images < 1:
        raise ValueError(f"--images must be >= 1, got {args.images}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.max_mb < 0:
        raise ValueError(f"--max-mb must be >= 0 (0: no limit), got {args.max_mb}")
    out = args.out or (run_directory(source) or source.parent) / "explorer.html"
    page = build_explorer(source, out, images=args.images, data_dir=args.data_dir,
                          max_mb=args.max_mb or None, batch_size=args.batch_size)
    print(f"{page.images} test images, {page.layers} attention layers; stored: {page.storage}")
    print(f"wrote {page.path} ({page.bytes / 1e6:.2f} MB); open it in a browser "
          f"(file://{page.path.resolve()})")
    return 0
