"""scripts/gpu-check.sh: one line and exit 0 without CUDA; every step and file, run on the CPU.

The real run needs a CUDA machine; here the script's test hook (ATTNCONV_GPU_CHECK_FAKE_CPU)
runs the same steps on the CPU (one selected test, ``bench --tiny``) so that the plumbing, the
files and the summary are checked on every machine.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu-check.sh"
CUDA_HERE = torch.cuda.is_available() or shutil.which("nvidia-smi") is not None


def run_script(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ATTNCONV_")}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          env={**clean, "OMP_NUM_THREADS": "1", **env}, timeout=300,
                          cwd=ROOT, check=False)


def summary_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_summary", ROOT / "scripts" /
                                                  "gpu_summary.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(CUDA_HERE, reason="this machine has CUDA: the script would run for real")
def test_without_cuda_one_line_and_nothing_written(tmp_path: Path) -> None:
    out = tmp_path / "gpu"
    done = run_script(str(out))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-check: no CUDA on this machine")
    assert done.stderr == ""
    assert not out.exists()


def test_usage() -> None:
    for args in ((), ("a", "b"), ("--help",)):
        done = run_script(*args)
        assert done.returncode == 2 and "usage: scripts/gpu-check.sh OUT_DIR" in done.stderr


def test_every_step_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu"
    done = run_script(str(out), ATTNCONV_GPU_CHECK_FAKE_CPU="1", ATTNCONV_PYTHON=sys.executable,
                      ATTNCONV_GPU_CHECK_K="test_layer_fast_paths_on_device and quadratic-cpu")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[0] == (f"gpu-check: using {sys.executable} (test run on "
                                           f"the CPU); results in {out}")
    assert {p.name for p in out.iterdir()} == {"environment.json", "tests.log", "tests.xml",
                                               "bench.json", "bench.md", "bench.log",
                                               "summary.md"}
    env = json.loads((out / "environment.json").read_text())
    assert env["torch"] == torch.__version__ and env["python"] == sys.executable
    bench = json.loads((out / "bench.json").read_text())
    assert bench["config"]["device"] == "cpu" and bench["models"]
    assert bench["compile"] == []  # --no-compile: compiling could eat the time budget
    summary = (out / "summary.md").read_text()
    assert "1 passed, 0 failed, 0 skipped" in summary
    assert "`attnconv bench --device cpu` (tiny)" in summary
    for row in bench["models"]:
        assert f"| {row['model']} | {row['precision']} |" in summary
    assert summary.count("\n") < 80  # one page


def test_summary_says_what_is_missing(tmp_path: Path) -> None:
    gpu_summary = summary_module()
    assert gpu_summary.main([str(tmp_path)]) == 0
    text = (tmp_path / "summary.md").read_text()
    assert "No test results (tests.xml missing or unreadable)" in text
    assert "No bench.json: the benchmark failed or ran out of time" in text
    (tmp_path / "tests.xml").write_text(
        '<testsuites><testsuite><testcase classname="t" name="a"/><testcase classname="t" '
        'name="b"><failure/></testcase><testcase classname="t" name="c"><skipped/></testcase>'
        "</testsuite></testsuites>")
    assert gpu_summary.main([str(tmp_path)]) == 0
    text = (tmp_path / "summary.md").read_text()
    assert "1 passed, 1 failed, 1 skipped" in text and "- FAILED t::b" in text
    assert gpu_summary.main([str(tmp_path / "missing")]) == 2
