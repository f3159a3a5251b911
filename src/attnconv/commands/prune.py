"""Prune degenerate Gaussian heads of a quadratic model, then (optionally) fine-tune.

A head is degenerate when the condition number of ``Sigma^-1`` is huge (a line, default > 1e3)
or its largest eigenvalue is tiny (near-uniform attention, default < 1e-5): the authors'
thresholds, see :mod:`attnconv.prune`. The pruned
model is written as a new run directory whose only checkpoint is the pruned weights (fresh
optimiser, schedule over ``--finetune-epochs``): ``--finetune-epochs N`` trains it right away,
and ``attnconv train --resume OUT`` does the same later.
"""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "prune"
HELP = "remove degenerate Gaussian heads (paper appendix) and fine-tune"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Checkpoint, thresholds, output run directory, fine-tuning length."""
    from attnconv.prune import MAX_CONDITION, MIN_EIGENVALUE

    parser.add_argument("checkpoint", help="a quadratic model's checkpoint or run directory")
    parser.add_argument("--out", required=True, help="new run directory for the pruned model")
    parser.add_argument("--min-eigenvalue", type=float, default=MIN_EIGENVALUE, metavar="X",
                        help="prune heads whose largest eigenvalue of Sigma^-1 is below X (too "
                             f"wide: near-uniform attention); finite, >= 0 (default "
                             f"{MIN_EIGENVALUE:g}, the authors')")
    parser.add_argument("--max-condition", type=float, default=MAX_CONDITION, metavar="X",
                        help="prune heads whose Sigma^-1 condition number exceeds X (a line, "
                             f"not a blob); finite, >= 1 (default {MAX_CONDITION:g}, the "
                             "authors')")
    parser.add_argument("--finetune-epochs", type=int, default=0, metavar="N",
                        help="epochs of fine-tuning after pruning, >= 0 (0: only write the run)")
    parser.add_argument("--lr", type=float, default=None,
                        help="fine-tuning learning rate, finite and > 0 (default: the run's lr "
                             "/ 10, as the authors' pruned run)")
    parser.add_argument("--dry-run", action="store_true", help="print the verdicts only")


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse out-of-range numbers and an unusable ``--out`` before anything is read or written.

    Raises :class:`~attnconv.errors.ConfigError` naming the flag and the fix.
    """
    import math

    from attnconv.errors import ConfigError
    from attnconv.prune import check_thresholds

    check_thresholds(args.min_eigenvalue, args.max_condition)
    if args.finetune_epochs < 0:
        raise ConfigError(f"--finetune-epochs must be >= 0, got {args.finetune_epochs}; pass 0 "
                          "to only write the pruned run, or the number of epochs to fine-tune")
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        raise ConfigError(f"--lr must be a finite number > 0, got {args.lr}; leave it out to "
                          "use the run's lr / 10")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; choose a new directory")
    if not args.dry_run and out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"{out} is not empty; choose a new --out directory")


def run(args: argparse.Namespace) -> int:
    """Classify heads, write the pruned run, optionally fine-tune it."""
    import torch

    from attnconv.prune import head_verdicts, prune_model, write_pruned_run
    from attnconv.textable import markdown_table
    from attnconv.train import train
    from attnconv.train.model_io import load_model

    check_arguments(args)
    model, meta = load_model(args.checkpoint)
    verdicts = head_verdicts(model, min_eigenvalue=args.min_eigenvalue,
                             max_condition=args.max_condition)
    print("\n".join(markdown_table(
        ["layer", "head", "centre (row, col)", "eig min", "eig max", "condition", "verdict"],
        [[str(v.layer), str(v.head), f"({v.center_row:+.2f}, {v.center_col:+.2f})",
          f"{v.eig_min:.3g}", f"{v.eig_max:.3g}", f"{v.condition:.3g}", v.reason]
         for v in verdicts],
        ["right", "right", "left", "right", "right", "right", "left"])))
    pruned_count = sum(not v.keep for v in verdicts)
    print(f"\n{pruned_count} of {len(verdicts)} heads are degenerate")
    if args.dry_run:
        return 0
    out = Path(args.out)
    pruned = prune_model(model, verdicts)
    heads = [layer.heads for layer in pruned.attention_layers()]
    cfg = write_pruned_run(pruned, meta, verdicts, out, source=args.checkpoint,
                           epochs=args.finetune_epochs, lr=args.lr)
    print(f"pruned model ({heads} heads per layer, "
          f"{sum(p.numel() for p in pruned.parameters()):,} parameters) written to {out}")
    if args.finetune_epochs > 0:
        torch.manual_seed(cfg.seed)
        train(resume=out)
    else:
        print(f"fine-tune it with: attnconv train --resume {out}")
    return 0
