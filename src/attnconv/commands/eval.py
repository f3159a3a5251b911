"""Evaluate a checkpoint on the test split of its dataset (or another one you name)."""

from __future__ import annotations

import argparse
import json
from typing import Any

NAME = "eval"
HELP = "print test accuracy and loss of a checkpoint"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Checkpoint, dataset and data directory."""
    parser.add_argument("checkpoint", help="a .safetensors checkpoint or a run directory "
                                           "(its best checkpoint is used)")
    parser.add_argument("--dataset", help="dataset name (default: the one it was trained on)")
    parser.add_argument("--data-dir", help="directory holding the dataset files")
    parser.add_argument("--split", default="test", choices=["train", "test"])
    parser.add_argument("--batch-size", type=int, default=500, help="images per forward pass")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--json", action="store_true", help="print JSON")


def check_compatible(model: Any, meta: dict[str, Any], dataset: str, images: Any,
                     num_classes: int, device: Any) -> None:
    """Refuse a dataset the checkpoint's model cannot evaluate, before evaluating.

    Raises :class:`~attnconv.errors.ShapeError` (image shape) or
    :class:`~attnconv.errors.ConfigError` (number of classes), naming both sides and the fix.
    """
    import torch

    from attnconv.errors import ConfigError, ShapeError

    trained = (f"{meta['model']} trained on {meta['dataset']} ({meta['in_chans']} channels, "
               f"{'x'.join(map(str, meta['image_size']))})")
    if num_classes != meta["num_classes"]:
        raise ConfigError(f"{trained} predicts {meta['num_classes']} classes, {dataset} has "
                          f"{num_classes}; evaluate it on a dataset with the same classes")
    c, h, w = images.shape[1:]
    try:
        with torch.no_grad():
            model(images[:1].float().to(device))
    except ShapeError as err:
        raise ShapeError(f"{trained} cannot take {dataset} images ({c} channels, {h}x{w}): "
                         f"{err}; evaluate it on a dataset with images like its "
                         f"own") from err


def run(args: argparse.Namespace) -> int:
    """Load the checkpoint and its model, evaluate, print."""
    import torch

    from attnconv.data import load_dataset
    from attnconv.errors import ConfigError
    from attnconv.train.distributed import pick_device
    from attnconv.train.engine import evaluate
    from attnconv.train.model_io import load_model

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be a positive integer, got {args.batch_size}")
    device = pick_device(args.device)  # an unknown or missing device: before loading anything
    model, meta = load_model(args.checkpoint)
    model.to(device)
    dataset = args.dataset or meta["dataset"]
    data_dir = args.data_dir or meta["config"].get("data_dir")
    arrays = load_dataset(dataset, args.split, data_dir)
    images = torch.from_numpy(arrays.images).permute(0, 3, 1, 2).contiguous()
    labels = torch.from_numpy(arrays.labels)
    if len(labels) == 0:
        raise ConfigError(f"the {args.split} split of {dataset} holds no images; there is "
                          f"nothing to evaluate")
    check_compatible(model, meta, dataset, images, arrays.num_classes, device)
    metrics = evaluate(model, images, labels, mean=meta["mean"], std=meta["std"],
                       batch_size=args.batch_size, device=device, precision=args.precision)
    row = {"checkpoint": str(args.checkpoint), "dataset": dataset, "split": args.split,
           "images": len(labels), **metrics}
    if args.json:
        print(json.dumps(row))
    else:
        print(f"{dataset} {args.split}: accuracy {metrics['accuracy']:.4f}  loss "
              f"{metrics['loss']:.4f}  ({len(labels)} images)")
    return 0
