"""Train a model: ``attnconv train --config sa-quadratic [key=value ...]``.

``--config`` takes a YAML file or the name of a config shipped in the package (the paper's runs
and the CPU runs; an existing file wins); ``--list-configs`` lists the shipped ones.
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
    """``--config``, ``--list-configs``, ``--resume`` and ``key=value`` overrides."""
    parser.add_argument("--config", metavar="NAME_OR_FILE",
                        help="a shipped config by name (e.g. sa-quadratic, fashion-resnet; see "
                             "--list-configs) or a YAML file (a file that exists wins)")
    parser.add_argument("--list-configs", action="store_true",
                        help="print the shipped configs' names with a one-line description, "
                             "then exit")
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
    if args.list_configs:
        if args.config or args.resume or args.overrides:
            raise ConfigError("--list-configs only lists the shipped configs; drop --config, "
                              "--resume and overrides")
        print(format_config_list())
        return 0
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


def format_config_list() -> str:
    """One line per shipped config: name, group, description; then how to use one."""
    from importlib.resources import files

    from attnconv.train.config import shipped_configs

    configs = list(shipped_configs().values())
    width = max((len(c.name) for c in configs), default=0)
    lines = [f"{c.name:<{width}}  {c.group:<5}  {c.description}" for c in configs]
    lines.append("train one with: attnconv train --config NAME [key=value ...]")
    lines.append(f"the files (to copy and edit): {files('attnconv') / 'configs'}")
    return "\n".join(lines)
