"""attnconv works from its wheel, installed outside the checkout, run from another directory.

The wheel is built from a copy of the sources (nothing is written into the checkout) and
installed, offline and without its dependencies, into a fresh virtual environment. The
dependencies (torch, numpy, ...) come from the environment running the tests through a ``.pth``
line in the new environment's site-packages: a plain path line adds that folder only, so the
editable install's own ``.pth`` (which points at ``src/``) is not followed and ``attnconv`` can
only be imported from the wheel. Every command then runs from a temporary working directory
that has no ``configs/`` folder: shipped configs, the embedded dataset and the package data
must all come from the installed package.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
COMMAND_TIMEOUT_S = 900  # generous: a loaded 2-core machine; the commands take seconds


@dataclass(frozen=True)
class Installed:
    """A virtual environment holding attnconv from the wheel, and a working directory."""

    venv: Path
    python: Path
    script: Path
    workdir: Path

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``attnconv ARGS`` from the working directory; fails the test on a non-zero exit."""
        result = subprocess.run([str(self.script), *args], cwd=self.workdir, env=_clean_env(),
                                capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
        assert result.returncode == 0, (args, result.stdout[-2000:], result.stderr[-2000:])
        return result


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(OMP_NUM_THREADS="1", PYTHONNOUSERSITE="1")
    return env


def _missing_tools() -> str | None:
    # Ask the installed distributions, not the import system: setuptools' distutils shim
    # answers importlib.util.find_spec("pip") by switching itself off for the whole process,
    # after which a later torch.compile (its C++ builder imports setuptools) fails.
    for name in ("pip", "setuptools", "wheel"):
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return f"the '{name}' package is not installed in {sys.executable}"
    if importlib.util.find_spec("venv") is None:
        return f"the 'venv' module is missing from {sys.executable}"
    return None


def _check(cmd: list[str], cwd: Path) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=_clean_env(), capture_output=True, text=True,
                            timeout=COMMAND_TIMEOUT_S)
    assert result.returncode == 0, (cmd, result.stdout[-2000:], result.stderr[-2000:])
    return result.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    missing = _missing_tools()
    if missing:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"cannot test the wheel on CI: {missing}")
        pytest.skip(f"cannot build and install the wheel here: {missing}")
    base = tmp_path_factory.mktemp("wheel")
    assert ROOT not in base.parents, "the test must build and install outside the checkout"
    source = base / "source"  # a copy: building in the checkout would write build/, egg-info
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc"))
    wheels = base / "wheels"
    _check([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
            "--no-index", "--quiet", "-w", str(wheels), str(source)], base)
    [wheel] = wheels.glob("attnconv-*.whl")

    venv = base / "venv"
    _check([sys.executable, "-m", "venv", "--without-pip", str(venv)], base)
    python = venv / ("Scripts" if os.name == "nt" else "bin") / "python"
    purelib = Path(_check([str(python), "-c", "import sysconfig; "
                           "print(sysconfig.get_paths()['purelib'])"], base).strip())
    # torch, numpy, pip, ... of the test environment (purelib and platlib differ on some systems)
    deps = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (purelib / "_attnconv_test_dependencies.pth").write_text("".join(f"{d}\n" for d in deps))
    # --ignore-installed: the test environment's (editable) attnconv is visible through the .pth;
    # pip must neither see it as already satisfied nor try to uninstall it.
    _check([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed",
            "--quiet", str(wheel)], base)
    workdir = base / "elsewhere"
    workdir.mkdir()
    script = python.parent / "attnconv"
    return Installed(venv=venv, python=python, script=script, workdir=workdir)


def test_the_wheel_is_what_gets_imported(installed: Installed) -> None:
    out = _check([str(installed.python), "-c",
                  "import attnconv, importlib.resources as r; print(attnconv.__file__); "
                  "print(r.files('attnconv') / 'configs' / 'paper' / 'sa-quadratic.yaml')"],
                 installed.workdir)
    module, config = (Path(line) for line in out.splitlines())
    assert installed.venv in module.parents and ROOT not in module.parents, module
    assert installed.venv in config.parents and config.is_file(), config
    assert installed.script.is_file()
    assert not (installed.workdir / "configs").exists()


def test_verify_runs_from_the_wheel(installed: Installed) -> None:
    result = installed.run("verify", "--size", "16", "--out", "verify")
    report = json.loads((installed.workdir / "verify" / "verify.json").read_text())
    assert report["size"] == 16 and report["cases"]
    assert {case["check"] for case in report["cases"]} == {"PASS"}
    assert "FAIL" not in result.stdout


def test_table1_runs_from_the_wheel(installed: Installed) -> None:
    result = installed.run("table1", "--format", "json")
    rows = {row["model"]: row for row in json.loads(result.stdout)["rows"]}
    assert {"resnet18", "sa-quadratic", "sa-learned", "sa-learned-content"} <= set(rows)
    assert all(row["params"] > 0 for row in rows.values())


def test_a_shipped_config_trains_from_the_wheel(installed: Installed) -> None:
    listing = installed.run("train", "--list-configs").stdout
    assert "sa-quadratic " in listing and "fashion-sa-quadratic " in listing
    installed.run("train", "--config", "fashion-sa-quadratic", "dataset=embedded",
                  "train_subset=100", "epochs=1", "batch_size=50", "threads=1", "device=cpu",
                  "out_dir=runs", "--no-progress")
    run = installed.workdir / "runs" / "fashion-sa-quadratic"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert (saved["model"], saved["dataset"], saved["epochs"]) == ("sa-quadratic", "embedded", 1)
    assert saved["model_args"]["heads"] == 9  # from the shipped file, not the defaults
    results = json.loads((run / "results.json").read_text())
    assert (results["train_images"], results["dataset"]) == (100, "embedded")
    assert 0.0 <= results["test_accuracy"] <= 1.0
