"""Train a model: ``attnconv train --config configs/paper/sa-quadratic.yaml [key=value ...]``.

Overrides are ``key=value`` (values read as YAML; ``model_args.hidden_size=64`` nests).
``--resume RUN_DIR`` continues a stopped run from its newest complete checkpoint. A new run
writes ``out_dir/name`` only when that directory does not exist or is empty; ``--overwrite``
replaces the run files of an existing one. Ctrl-C or
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
    parser.add_argument("--overwrite", action="store_true",
                        help="write into out_dir/name even if it exists and is not empty, "
                             "replacing its run files (config.yaml, metrics.jsonl, heads.jsonl, "
                             "results.json, checkpoints/, tensorboard/); without it an existing "
                             "non-empty directory is refused")
    parser.add_argument("--allow-config-change", action="store_true",
                        help="with --resume: continue even though config.yaml was edited since "
                             "the checkpoint (e.g. batch_size, model, epochs); otherwise refused")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    """Run the training and print where the results are."""
    from attnconv.errors import ConfigError
    from attnconv.train import load_config, train

    bar = False if args.no_progress else None
    if args.resume:
        if args.config or args.overrides:
            raise ConfigError("--resume continues a run with its saved config.yaml; drop "
                              "--config and overrides")
        if args.overwrite:
            raise ConfigError("--overwrite replaces a run, --resume continues it; pass only one")
        train(resume=args.resume, allow_config_change=args.allow_config_change,
              progress_bar=bar)
    else:
        if args.allow_config_change:
            raise ConfigError("--allow-config-change only applies to --resume RUN_DIR")
        cfg = load_config(args.config, args.overrides)
        train(cfg, overwrite=args.overwrite, progress_bar=bar)
    return 0
