"""Evaluate a checkpoint on the test split of its dataset (or another one you name)."""

from __future__ import annotations

import argparse
import json

NAME = "eval"
HELP = "print test accuracy and loss of a checkpoint"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Checkpoint, dataset and data directory."""
    parser.add_argument("checkpoint", help="a .safetensors checkpoint or a run directory "
                                           "(its best checkpoint is used)")
    parser.add_argument("--dataset", help="dataset name (default: the one it was trained on)")
    parser.add_argument("--data-dir", help="directory holding the dataset files")
    parser.add_argument("--split", default="test", choices=["train", "test"])
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    """Load the checkpoint and its model, evaluate, print."""
    import torch

    from attnconv.data import load_dataset
    from attnconv.train.distributed import pick_device
    from attnconv.train.engine import evaluate
    from attnconv.train.model_io import load_model

    model, meta = load_model(args.checkpoint)
    device = pick_device(args.device)
    model.to(device)
    dataset = args.dataset or meta["dataset"]
    data_dir = args.data_dir or meta["config"].get("data_dir")
    arrays = load_dataset(dataset, args.split, data_dir)
    images = torch.from_numpy(arrays.images).permute(0, 3, 1, 2).contiguous()
    labels = torch.from_numpy(arrays.labels)
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
