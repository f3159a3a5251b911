"""Training configuration: YAML, overrides, unknown keys, invalid values."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from attnconv.errors import ConfigError
from attnconv.train.config import (
    SHIPPED_GROUPS,
    TrainConfig,
    config_from_dict,
    load_config,
    resolve_config,
    shipped_configs,
)

ROOT = Path(__file__).resolve().parents[2]
PACKAGED = ROOT / "src" / "attnconv" / "configs"


def test_defaults_are_the_paper_recipe() -> None:
    cfg = TrainConfig()
    assert (cfg.lr, cfg.momentum, cfg.weight_decay, cfg.batch_size, cfg.epochs) == (
        0.1, 0.9, 1e-4, 100, 300)
    assert cfg.schedule == "warmup-cosine" and cfg.warmup_fraction == 0.05


@pytest.mark.parametrize("path", sorted(PACKAGED.glob("*/*.yaml")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_config_loads_by_path_and_by_name(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.name
    name = path.stem
    assert load_config(name) == cfg == load_config(f"{path.parent.name}/{name}")
    assert load_config(f"{name}.yaml") == cfg
    description = shipped_configs()[name].description
    assert description and len(description) <= 98, description  # one line for --list-configs


def test_shipped_config_names_are_unique_and_all_listed() -> None:
    on_disk = sorted(PACKAGED.glob("*/*.yaml"))
    assert {p.parent.name for p in on_disk} <= set(SHIPPED_GROUPS)
    stems = [p.stem for p in on_disk]
    assert len(stems) == len(set(stems)), "a config name must be unique across groups"
    assert sorted(shipped_configs()) == sorted(stems)
    assert {"sa-quadratic", "resnet18", "fashion-resnet"} <= set(stems)


def test_an_existing_file_wins_over_a_shipped_name(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("sa-quadratic").write_text(yaml.safe_dump({"name": "mine", "epochs": 3}))
    cfg = load_config("sa-quadratic")
    assert (cfg.name, cfg.epochs) == ("mine", 3)
    assert resolve_config("sa-quadratic") == Path("sa-quadratic")
    assert load_config("paper/sa-quadratic").name == "sa-quadratic"  # no such file here


@pytest.mark.parametrize(("spec", "message"), [
    ("sa-quadratc", r"no config file or shipped config named 'sa-quadratc'; did you mean "
                    r"'sa-quadratic'\?"),
    ("paper/resnet-18", r"did you mean 'resnet18'\?"),
    ("zzzzzz", r"named 'zzzzzz'; attnconv train --list-configs lists them"),
    ("configs/paper/sa-quadratic.yaml", r"config file configs/paper/sa-quadratic.yaml does not "
                                         r"exist; the shipped config 'sa-quadratic' has moved "
                                         r"into the package: --config sa-quadratic"),
    ("elsewhere/mine.yaml", r"does not exist; attnconv train --list-configs"),
    ("", r"no config file or shipped config named ''"),
])
def test_unknown_config_names_suggest_a_shipped_one(spec: str, message: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=message):
        load_config(spec)


def test_list_configs_prints_every_name_with_its_description(
        capsys: pytest.CaptureFixture[str]) -> None:
    from attnconv.cli import main

    assert main(["train", "--list-configs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    shipped = shipped_configs()
    listed = {line.split()[0]: line for line in lines[:len(shipped)]}
    assert list(listed) == list(shipped)
    for name, line in listed.items():
        assert line.split()[1] == shipped[name].group
        assert line.endswith(shipped[name].description)
    assert "attnconv train --config NAME" in lines[-2]
    assert Path(lines[-1].rpartition(": ")[2], "paper", "sa-quadratic.yaml").is_file()
    assert main(["train", "--list-configs", "--config", "sa-quadratic"]) == 1
    assert "--list-configs only lists" in capsys.readouterr().err


def test_paper_configs_follow_the_recipe() -> None:
    for name in ["sa-quadratic", "sa-quadratic-full", "sa-quadratic-16heads", "sa-learned",
                 "sa-learned-content", "resnet18"]:
        cfg = load_config(name)
        assert shipped_configs()[name].group == "paper"
        assert (cfg.model, cfg.dataset, cfg.epochs, cfg.batch_size) == (name, "cifar10", 300, 100)
        assert (cfg.lr, cfg.momentum, cfg.weight_decay) == (0.1, 0.9, 1e-4)
    resnet = load_config("resnet18")
    assert resnet.schedule == "multistep" and resnet.milestones == [80, 150, 250]


def test_demo_configs_match_the_demo_command() -> None:
    from attnconv.commands.demo import DEMO_RUNS, demo_config

    for run in DEMO_RUNS:  # `attnconv train --config demo-R` trains what the demo trains
        assert load_config(f"demo-{run}") == demo_config(run, "runs/demo")
        assert shipped_configs()[f"demo-{run}"].group == "cpu"


def test_the_demo_reads_its_settings_from_the_shipped_configs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from attnconv.commands.demo import demo_config, scaled_milestones
    from attnconv.train import config as config_module

    edited = tmp_path / "demo-cnn.yaml"
    data = yaml.safe_load(shipped_configs()["demo-cnn"].resource.read_text())
    edited.write_text(yaml.safe_dump({**data, "lr": 0.3, "epochs": 7, "batch_size": 20}))
    shipped = {**shipped_configs(), "demo-cnn": config_module.ShippedConfig("demo-cnn", "cpu",
                                                                           edited)}
    monkeypatch.setattr(config_module, "shipped_configs", lambda: shipped)
    cfg = demo_config("cnn", tmp_path / "out")
    assert (cfg.lr, cfg.epochs, cfg.batch_size) == (0.3, 7, 20)
    assert (cfg.name, cfg.out_dir) == ("cnn", str(tmp_path / "out"))
    assert cfg.milestones == scaled_milestones(7)
    assert demo_config("cnn", "o", epochs=30).milestones == scaled_milestones(30)
    monkeypatch.chdir(tmp_path)  # a file named like the shipped config does not shadow it
    Path("demo-sa-quadratic").write_text(yaml.safe_dump({"lr": 0.5}))
    sa_lr = yaml.safe_load(shipped_configs()["demo-sa-quadratic"].resource.read_text())["lr"]
    assert sa_lr != 0.5 and demo_config("sa-quadratic", "o").lr == sa_lr
    with pytest.raises(ConfigError, match="unknown demo run 'resnet'"):
        demo_config("resnet", "o")


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


@pytest.mark.parametrize("name", ["", " ", ".", "..", "a/b", "../escape", "/abs/run", "a\0b",
                                  "runs/"])
def test_run_name_is_one_plain_path_component(name: str) -> None:
    """The run directory is out_dir/name: a name may not leave out_dir or name a subtree."""
    with pytest.raises(ConfigError, match="name must name the run directory"):
        config_from_dict({"name": name})
    assert config_from_dict({"name": "sa-quadratic.v2 (seed 1)"}).name == "sa-quadratic.v2 (seed 1)"


@pytest.mark.parametrize("seed", [-1, 2**63, 2**64, 10**30])
def test_seed_outside_the_generator_range_is_refused(seed: int) -> None:
    with pytest.raises(ConfigError, match=r"seed must be an integer in \[0, 2\*\*63\)"):
        config_from_dict({"seed": seed})
    assert config_from_dict({"seed": 2**63 - 1}).seed == 2**63 - 1


def test_yaml_files_that_are_not_configs(tmp_path: Path) -> None:
    """Cases the fuzzer found or could find, each a ConfigError naming the problem."""
    cases = {
        b"lr: 1" + b"0" * 400 + b"\n": "lr must be a finite number",
        b"1: 2\n": "config keys are names",
        b"model_args: {1: 2}\n": "model_args must be a mapping of model option names",
        b"\xff\xfe: 1\n": "not UTF-8",
        b"[" * 5000: "nested too deeply|not valid YAML",
        b"epochs: !!python/object:os.system {}\n": "not valid YAML",
        b"a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
        b"c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
        b"d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
        b"e: [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n": "more than 100,000 values",
    }
    for i, (text, message) in enumerate(cases.items()):
        path = tmp_path / f"c{i}.yaml"
        path.write_bytes(text)
        with pytest.raises(ConfigError, match=message):
            load_config(path)
    big = tmp_path / "big.yaml"
    big.write_bytes(b"# " + b"x" * 1_000_001)
    with pytest.raises(ConfigError, match="more than a config file can be"):
        load_config(big)
    listy = tmp_path / "l.yaml"
    listy.write_text("model_args: [1]\n")
    with pytest.raises(ConfigError, match="not a mapping"):
        load_config(listy, ["model_args.hidden_size=8"])
