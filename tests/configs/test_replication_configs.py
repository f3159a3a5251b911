"""The shipped fashion-* configs: Table 1 of the paper on Fashion-MNIST, a fair comparison."""

from __future__ import annotations

from attnconv.commands.demo import scaled_milestones
from attnconv.models import create_model
from attnconv.train.config import load_config

RUNS = ("fashion-sa-quadratic", "fashion-sa-learned", "fashion-resnet")


def test_fashion_runs_are_a_fair_comparison() -> None:
    cfgs = {name: load_config(name) for name in RUNS}
    assert {name: c.name for name, c in cfgs.items()} == {name: name for name in RUNS}
    shared = {(c.dataset, c.data_dir, c.epochs, c.batch_size, c.val_fraction, c.augment, c.seed,
               c.lr, c.momentum, c.weight_decay, c.train_subset) for c in cfgs.values()}
    assert shared == {("fashion-mnist", None, 20, 100, 0.1, True, 0, 0.1, 0.9, 1e-4, None)}
    for name in RUNS[:2]:  # the paper's SA schedule
        assert (cfgs[name].schedule, cfgs[name].warmup_fraction) == ("warmup-cosine", 0.05)
    resnet = cfgs["fashion-resnet"]  # the paper's ResNet schedule, scaled to the epochs
    assert resnet.schedule == "multistep" and resnet.gamma == 0.1
    assert resnet.milestones == scaled_milestones(resnet.epochs)
    params = {name: sum(p.numel() for p in create_model(
        c.model, in_chans=1, image_size=28, num_classes=10, **c.model_args).parameters())
        for name, c in cfgs.items()}
    assert max(params.values()) <= 1.25 * min(params.values()), params
