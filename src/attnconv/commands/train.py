"""Train a model: ``attnconv train --config configs/paper/sa-quadratic.yaml [key=value ...]``.

Overrides are ``key=value`` (values read as YAML; ``model_args.hidden_size=64`` nests).
``--resume RUN_DIR`` continues a stopped run from its newest complete checkpoint. Ctrl-C or
SIGTERM writes a checkpoint first and prints the resume command. Under
``torchrun --nproc_per_node N -m attnconv train ...`` it trains with DistributedDataParallel.
What survives what: docs/reliability.md.
"""

from __future__ import annotations

import argparse

NAME = "train"
HELP = "train a model (paper recipe by default; --resume RUN_DIR to continue)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config``, ``--resume`` and ``key=value`` overrides."""
    parser.add_argument("--config", help="YAML config (configs/paper/*.yaml, configs/cpu/*.yaml)")
    parser.add_argument("--resume", metavar="RUN_DIR",
                        help="continue the run in RUN_DIR from its newest complete checkpoint")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. epochs=10 precision=bf16 "
                             "model_args.hidden_size=64")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    """Run the training and print where the results are."""
    from attnconv.errors import ConfigError
    from attnconv.train import load_config, train

    if args.resume:
        if args.config or args.overrides:
            raise ConfigError("--resume continues a run with its saved config.yaml; drop "
                              "--config and overrides")
        train(resume=args.resume, progress_bar=False if args.no_progress else None)
    else:
        cfg = load_config(args.config, args.overrides)
        train(cfg, progress_bar=False if args.no_progress else None)
    return 0
