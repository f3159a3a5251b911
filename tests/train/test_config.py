"""Training configuration: YAML, overrides, unknown keys, invalid values."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from attnconv.errors import ConfigError
from attnconv.train.config import TrainConfig, config_from_dict, load_config

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_are_the_paper_recipe() -> None:
    cfg = TrainConfig()
    assert (cfg.lr, cfg.momentum, cfg.weight_decay, cfg.batch_size, cfg.epochs) == (
        0.1, 0.9, 1e-4, 100, 300)
    assert cfg.schedule == "warmup-cosine" and cfg.warmup_fraction == 0.05


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*/*.yaml")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_config_loads(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.name


def test_paper_configs_follow_the_recipe() -> None:
    for name in ["sa-quadratic", "sa-quadratic-full", "sa-quadratic-16heads", "sa-learned",
                 "sa-learned-content", "resnet18"]:
        cfg = load_config(ROOT / "configs" / "paper" / f"{name}.yaml")
        assert (cfg.model, cfg.dataset, cfg.epochs, cfg.batch_size) == (name, "cifar10", 300, 100)
        assert (cfg.lr, cfg.momentum, cfg.weight_decay) == (0.1, 0.9, 1e-4)
    resnet = load_config(ROOT / "configs" / "paper" / "resnet18.yaml")
    assert resnet.schedule == "multistep" and resnet.milestones == [80, 150, 250]


def test_demo_configs_match_the_demo_command() -> None:
    from attnconv.commands.demo import DEMO_RUNS, demo_config

    for run in DEMO_RUNS:
        shipped = load_config(ROOT / "configs" / "cpu" / f"demo-{run}.yaml")
        assert shipped == demo_config(run, "runs/demo")


def test_overrides_and_nesting() -> None:
    cfg = load_config(None, ["epochs=3", "lr=0.05", "model_args.hidden_size=32",
                             "model_args={heads: 2}", "precision=bf16"])
    assert cfg.epochs == 3 and cfg.lr == 0.05 and cfg.precision == "bf16"
    assert cfg.model_args == {"heads": 2}
    cfg = load_config(None, ["model_args.hidden_size=32", "model_args.heads=2"])
    assert cfg.model_args == {"hidden_size": 32, "heads": 2}


def test_unknown_key_suggests_the_right_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown config key 'learning_rat'"):
        config_from_dict({"learning_rat": 0.1})
    with pytest.raises(ConfigError, match=r"did you mean 'epochs'"):
        load_config(None, ["epoch=3"])
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"batch_sise": 10}))
    with pytest.raises(ConfigError, match=r"did you mean 'batch_size'"):
        load_config(path)


@pytest.mark.parametrize(("override", "message"), [
    ("lr=-0.1", "lr must be positive"),
    ("epochs=0", "epochs must be a positive integer"),
    ("batch_size=2.5", "batch_size must be an integer"),
    ("momentum=1.5", "momentum must be in"),
    ("val_fraction=1", "val_fraction must be in"),
    ("precision=fp8", "precision must be one of"),
    ("augment=maybe", "augment must be true or false"),
    ("schedule=linear", "schedule must be one of"),
    ("epochs", "not of the form key=value"),
])
def test_invalid_values(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listy)


def test_saved_config_round_trips(tmp_path: Path) -> None:
    cfg = load_config(None, ["epochs=7", "model_args.hidden_size=16"])
    cfg.save(tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


@pytest.mark.parametrize(("override", "message"), [
    ("lr=.inf", "lr must be a finite number"),
    ("lr=nan", "lr must be a finite number"),
    ("threads=-1", "threads must be a positive integer or null"),
    ("train_subset=abc", "train_subset must be a positive integer or null"),
    ("dist_timeout_s=0", "dist_timeout_s must be a positive number"),
    ("name=", "name must name the run directory"),
    ("milestones=[a]", "milestones must be a list of epochs"),
])
def test_more_invalid_values(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_exponent_without_dot_is_a_number() -> None:
    """YAML 1.1 reads ``1e6`` as a string; float keys accept it anyway."""
    assert load_config(None, ["lr=1e6", "dist_timeout_s=1e2"]).lr == 1e6
