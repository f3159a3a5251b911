"""Nothing unsafe: bad input is refused with a precise exception (API) or one line (CLI).

The readers themselves are fuzzed in tests/data (test_data_cifar.py, test_data_idx.py,
test_data_safe_pickle.py); here every failure is followed up to the command line: exit code
non-zero, exactly one line on stderr naming the problem and the fix, no traceback (a traceback
only with --debug), and no half-written output.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from test_reliability_helpers import (
    ENV,
    SMALL,
    assert_no_partial_files,
    assert_same_final_state,
    one_line,
    overrides,
    reference_run,
)
from torch import nn

from attnconv.cli import main
from attnconv.errors import (
    CheckpointError,
    ConfigError,
    DatasetError,
    ShapeError,
    UnsafePickleError,
)
from attnconv.models import create_model
from attnconv.theorem import conv_to_attention
from attnconv.train.trainer import TrainingDiverged

ROOT = Path(__file__).resolve().parents[2]
CIFAR_FILES = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]


class _Exploit:
    """Unpickling this runs ``touch MARKER``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def write_cifar10(root: Path, damage: str = "") -> Path:
    """A small cifar-10-batches-py under ``root`` (4 images a file), optionally damaged:
    ``incomplete`` (files missing), ``truncated`` (data_batch_2 cut short) or ``malicious``
    (data_batch_1 executes ``touch root/pwned`` when unpickled)."""
    directory = root / "cifar-10-batches-py"
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = CIFAR_FILES[:2] if damage == "incomplete" else CIFAR_FILES
    for name in names:
        batch = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, 4).tolist()}
        (directory / name).write_bytes(pickle.dumps(batch, protocol=2))
    (directory / "batches.meta").write_bytes(pickle.dumps(
        {b"label_names": [f"class{i}".encode() for i in range(10)]}, protocol=2))
    if damage == "truncated":
        data = (directory / "data_batch_2").read_bytes()
        (directory / "data_batch_2").write_bytes(data[:len(data) // 3])
    if damage == "malicious":
        (directory / "data_batch_1").write_bytes(pickle.dumps(
            {b"data": _Exploit(root / "pwned"), b"labels": []}, protocol=2))
    return root


@dataclass
class Case:
    """One bad input: the command line (``{tmp}``, ``{run}`` filled in), what the
    message must contain, the exception ``--debug`` lets through, and whether a run directory
    may exist afterwards (only for failures after training started)."""

    argv: list[str]
    expect: list[str]
    error: type[BaseException]
    run_dir_allowed: bool = False
    prepare: Callable[[Path, pytest.MonkeyPatch], None] = field(default=lambda p, m: None)


def _small_train(*extra: str) -> list[str]:
    base = {k: v for k, v in SMALL.items() if k not in ("deterministic",)}
    return ["train", "--no-progress", *overrides(base), "out_dir={tmp}/runs", "name=x", *extra]


def _cifar(damage: str) -> Callable[[Path, pytest.MonkeyPatch], None]:
    return lambda tmp, _m: write_cifar10(tmp / "cifar", damage) and None


def _full_disk(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if ".step-00000004.safetensors." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def _edited_run(tmp: Path, _m: pytest.MonkeyPatch) -> None:
    """A copy of the reference run whose config.yaml says batch_size 40 (it trained with 20)."""
    shutil.copytree(reference_run(), tmp / "edited")
    config = tmp / "edited" / "config.yaml"
    config.write_text(config.read_text().replace("batch_size: 20", "batch_size: 40"))


def _truncated_checkpoint(tmp: Path, _m: pytest.MonkeyPatch) -> None:
    data = (reference_run() / "checkpoints" / "best.safetensors").read_bytes()
    (tmp / "cut.safetensors").write_bytes(data[:len(data) - 100])


CIFAR = ["dataset=cifar10", "data_dir={tmp}/cifar"]
CASES: dict[str, Case] = {
    "dataset-dir-missing": Case(_small_train(*CIFAR), ["cifar10 not found", "Download"],
                                DatasetError),
    "dataset-incomplete": Case(_small_train(*CIFAR), ["incomplete: missing data_batch_3",
                                                      "Download"], DatasetError,
                               prepare=_cifar("incomplete")),
    "dataset-truncated": Case(_small_train(*CIFAR), ["data_batch_2 is corrupted", "extract"],
                              DatasetError, prepare=_cifar("truncated")),
    "dataset-malicious-pickle": Case(_small_train(*CIFAR), ["refused to load",
                                                            "posix.system"],
                                     UnsafePickleError, prepare=_cifar("malicious")),
    "unknown-config-key": Case(_small_train("learning_rate=0.1"),
                               ["unknown config key 'learning_rate'"], ConfigError),
    "negative-lr": Case(_small_train("lr=-0.1"), ["lr must be positive"], ConfigError),
    "zero-heads": Case(_small_train("model_args.heads=0"),
                       ["heads must be a positive integer"], ConfigError),
    "unknown-model-arg": Case(_small_train("model_args.hiden_size=8"),
                              ["no option 'hiden_size'", "did you mean 'hidden_size'"],
                              ConfigError),
    "size-not-divisible": Case(_small_train("model_args.downsample=3"),
                               ["not divisible", "downsample=3", "pad the images"],
                               ConfigError),
    "channels-from-data": Case(_small_train("model_args.in_chans=3"),
                               ["model_args.in_chans is set from the dataset"], ConfigError),
    "learned-table-too-small": Case(_small_train("model=sa-learned",
                                                 "model_args.image_size=16"),
                                    ["cannot take the embedded images", "image_size"],
                                    ShapeError),
    "unknown-model": Case(_small_train("model=sa-quadratik"),
                          ["unknown model", "did you mean 'sa-quadratic'"], ConfigError),
    "batch-larger-than-data": Case(_small_train("train_subset=10"), ["lower batch_size"],
                                   ConfigError),
    "bad-dist-timeout": Case(_small_train("dist_timeout_s=0"), ["dist_timeout_s must be"],
                             ConfigError),
    "resume-not-a-run": Case(["train", "--resume", "{tmp}"], ["not a run directory"],
                             ConfigError),
    "nan-loss": Case(_small_train("lr=1e6", "schedule=constant", "checkpoint_every_steps=1"),
                     ["the loss became nan", "last good checkpoint", "lower lr"],
                     TrainingDiverged, run_dir_allowed=True),
    "full-disk": Case(_small_train(), ["could not write the checkpoint",
                                       "No space left on device", "free space"],
                      CheckpointError, run_dir_allowed=True, prepare=_full_disk),
    "eval-other-dataset": Case(["eval", "{run}", "--dataset", "cifar10", "--data-dir",
                                "{tmp}/cifar"],
                               ["cannot take cifar10 images (3 channels, 32x32)",
                                "evaluate it on a dataset with images like its own"],
                               ShapeError, prepare=_cifar("")),
    "eval-truncated-checkpoint": Case(["eval", "{tmp}/cut.safetensors"],
                                      ["cut.safetensors", "corrupted"],
                                      CheckpointError, prepare=_truncated_checkpoint),
    "seed-too-large": Case(_small_train(f"seed={2**63}"),
                           ["seed must be an integer in [0, 2**63)"], ConfigError),
    "seed-negative": Case(_small_train("seed=-1"), ["seed must be an integer in [0, 2**63)"],
                          ConfigError),
    "name-with-separator": Case(_small_train("name=../x"), ["name must name the run directory",
                                                            "no '/'"], ConfigError),
    "device-unknown": Case(_small_train("device=tpu"), ["device must be one of"], ConfigError),
    "device-missing": Case(_small_train("device=cuda" if not torch.cuda.is_available() else
                                        "device=mps"),
                           ["was requested but", "is not available", "device=cpu"],
                           ConfigError),
    "model-too-large": Case(_small_train("model_args.hidden_size=400000"),
                            ["needs at least", "GiB to train", "GiB available",
                             "lower batch_size or the model size"], ConfigError),
    "resume-config-edited": Case(["train", "--resume", "{tmp}/edited"],
                                 ["no longer matches its checkpoint",
                                  "batch_size (checkpoint 20, config.yaml 40)",
                                  "--allow-config-change"], ConfigError, prepare=_edited_run),
    "eval-batch-size-negative": Case(["eval", "{run}", "--batch-size", "-5"],
                                     ["--batch-size must be a positive integer, got -5"],
                                     ConfigError),
    "eval-batch-size-zero": Case(["eval", "{run}", "--batch-size", "0"],
                                 ["--batch-size must be a positive integer, got 0"],
                                 ConfigError),
    "eval-device-unknown": Case(["eval", "{run}", "--device", "bogus"],
                                ["unknown device 'bogus'", "use auto, cpu"], ConfigError),
    "explore-no-images": Case(["explore", "{run}", "--images", "0", "--out", "{tmp}/e.html"],
                              ["--images must be >= 1, got 0"], ValueError),
    "explore-batch-size-zero": Case(["explore", "{run}", "--batch-size", "0", "--out",
                                     "{tmp}/e.html"],
                                    ["--batch-size must be >= 1, got 0"], ValueError),
}


@pytest.mark.parametrize("name", list(CASES))
def test_cli_bad_input_is_one_line(name: str, tmp_path: Path, capsys,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    case = CASES[name]
    if name == "full-disk" and not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc")
    case.prepare(tmp_path, monkeypatch)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in case.argv]
    argv = [str(reference_run()) if a == "{run}" else a for a in argv]
    before = snapshot(tmp_path)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code != 0
    line = one_line(err)
    assert line.startswith(f"attnconv {argv[0]}: error: ")
    for text in case.expect:
        assert text in line, (text, line)
    assert not (tmp_path / "cifar" / "pwned").exists()
    run_dir = tmp_path / "runs" / "x"
    if case.run_dir_allowed:
        assert_no_partial_files(run_dir)
    else:
        assert not run_dir.exists()
        assert snapshot(tmp_path) == before  # nothing created, changed or removed

    with pytest.raises(case.error):  # --debug: the exception (and its traceback) comes out
        main(["--debug", *(a.replace("name=x", "name=x-debug") for a in argv)])


def snapshot(root: Path) -> dict[str, tuple[bool, bytes | None, int]]:
    """Every path under ``root`` with (is a directory, content of a file, mtime in ns)."""
    return {str(p.relative_to(root)): (p.is_dir(), None if p.is_dir() else p.read_bytes(),
                                       p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


def _finished_run_without_checkpoints(run: Path) -> None:
    shutil.copytree(reference_run(), run)
    shutil.rmtree(run / "checkpoints")


def _user_directory(run: Path) -> None:
    run.mkdir(parents=True)
    (run / "thesis.tex").write_text("months of work\n")


def _plain_file(run: Path) -> None:
    run.parent.mkdir(parents=True)
    run.write_text("not a directory\n")


CLOBBER = {
    "finished-run-checkpoints-deleted": (_finished_run_without_checkpoints,
                                         "neither empty nor a resumable attnconv run"),
    "user-directory": (_user_directory, "neither empty nor a resumable attnconv run"),
    "complete-run": (lambda run: shutil.copytree(reference_run(), run),
                     "already holds a run; continue it with --resume"),
    "a-file": (_plain_file, "exists and is not a directory"),
}


@pytest.mark.parametrize("kind", list(CLOBBER))
def test_train_refuses_a_directory_it_may_not_write(kind: str, tmp_path: Path, capsys) -> None:
    """Without --resume or --overwrite, train writes only into a new or empty directory: any
    other is refused with one line naming it, before anything is written."""
    make, message = CLOBBER[kind]
    run = tmp_path / "runs" / "x"
    make(run)
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert main([a.replace("{tmp}", str(tmp_path)) for a in _small_train()]) == 1
    line = one_line(capsys.readouterr().err)
    assert message in line and str(run) in line, line
    if kind != "a-file":
        assert "--overwrite" in line
    assert snapshot(tmp_path) == before


def test_overwrite_replaces_only_the_run_files(tmp_path: Path, capsys) -> None:
    """--overwrite trains into an existing directory: the old run files go, other files stay;
    an empty directory needs no flag."""
    run = tmp_path / "runs" / "x"
    _finished_run_without_checkpoints(run)
    (run / "notes.txt").write_text("keep me\n")
    (run / "metrics.jsonl").write_text('{"epoch": 99}\n')
    argv = [a.replace("{tmp}", str(tmp_path)) for a in _small_train("epochs=1")]
    assert main([*argv, "--overwrite"]) == 0
    assert (run / "notes.txt").read_text() == "keep me\n"
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text()
              .splitlines()]
    assert epochs == [1]
    assert json.loads((run / "results.json").read_text())["epochs"] == 1
    empty = tmp_path / "runs" / "empty"
    empty.mkdir()
    assert main([*argv, "name=empty"]) == 0
    assert (empty / "results.json").is_file()
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--overwrite"]) == 1
    assert "pass only one" in one_line(capsys.readouterr().err)


def test_resume_with_an_edited_config(tmp_path: Path, capsys) -> None:
    """An edited batch size is refused (nothing written) unless --allow-config-change; keys
    that do not change the run (threads, keep_last...) may change freely."""
    run = tmp_path / "run"
    shutil.copytree(reference_run(), run)
    for name in ("results.json", "checkpoints/last.safetensors"):
        (run / name).unlink()  # back to the newest step checkpoint: unfinished
    config = run / "config.yaml"
    original = config.read_text()
    config.write_text(original.replace("batch_size: 20", "batch_size: 40")
                      .replace("epochs: 2", "epochs: 3"))
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 1
    line = one_line(capsys.readouterr().err)
    assert "batch_size (checkpoint 20, config.yaml 40)" in line
    assert "epochs (checkpoint 2, config.yaml 3)" in line
    assert snapshot(tmp_path) == before
    config.write_text(original.replace("threads: 1", "threads: 2").replace("keep_last: 2",
                                                                            "keep_last: 3"))
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert_same_final_state(reference_run(), run)  # the same run, continued


def test_malicious_cifar_pickle_in_a_real_process(tmp_path: Path) -> None:
    """The crafted pickle through ``python -m attnconv train``: exit 1, one line, nothing
    executed; with --debug the traceback is printed."""
    write_cifar10(tmp_path, "malicious")
    args = ["train", "dataset=cifar10", f"data_dir={tmp_path}", f"out_dir={tmp_path}/runs"]
    for debug in (False, True):
        proc = subprocess.run([sys.executable, "-m", "attnconv", *(["--debug"] * debug), *args],
                              capture_output=True, text=True, env=ENV, timeout=120)
        assert proc.returncode == 1
        assert not (tmp_path / "pwned").exists()
        assert not (tmp_path / "runs").exists()
        if debug:
            assert "Traceback" in proc.stderr and "UnsafePickleError" in proc.stderr
        else:
            assert "refused to load" in one_line(proc.stderr)


# -- the API raises precise exceptions -------------------------------------------------------

def test_converter_refuses_unsupported_layers() -> None:
    for layer in (nn.ConvTranspose2d(3, 4, 3), nn.Conv3d(3, 4, 3), nn.Linear(3, 4)):
        with pytest.raises(NotImplementedError, match=type(layer).__name__) as info:
            conv_to_attention(layer)
        assert "Conv2d" in str(info.value)  # names what it does support


def test_learned_encoding_beyond_its_table_names_the_fix() -> None:
    model = create_model("sa-learned", num_classes=10, in_chans=1, image_size=16,
                         hidden_size=8, num_layers=1, heads=2, ffn_size=8)
    with pytest.raises(ShapeError, match=r"image_size=\(28, 28\) or larger"):
        model(torch.zeros(1, 1, 28, 28))
    with pytest.raises(ShapeError, match="in_chans=3"):
        model(torch.zeros(1, 3, 16, 16))


# -- no unpickling anywhere in the library -----------------------------------------------------

UNSAFE = {
    "pickle.load / pickle.loads": re.compile(r"\b(c?pickle|_pickle)\.loads?\s*\("),
    "a pickle.Unpickler": re.compile(r"\bUnpickler\b"),
    "marshal / shelve / dill / joblib": re.compile(r"\b(marshal\.loads?|shelve\.open|dill\.|"
                                                   r"joblib\.load)\b"),
    "numpy allow_pickle=True": re.compile(r"allow_pickle\s*=\s*True"),
    "yaml.load / unsafe_load": re.compile(r"\byaml\.(load|unsafe_load|full_load)\s*\("),
    "pandas read_pickle": re.compile(r"\bread_pickle\s*\("),
}
RESTRICTED_UNPICKLER = Path("src/attnconv/data/safe_pickle.py")


def unsafe_loads(path: Path, text: str) -> list[str]:
    """Lines of ``text`` that could unpickle untrusted data."""
    found = []
    for what, pattern in UNSAFE.items():
        if path.as_posix().endswith(RESTRICTED_UNPICKLER.as_posix()) and "pickle" in what.lower():
            continue  # the restricted unpickler is the one allowed user
        found += [f"{path}: {what}: {m.group(0)}" for m in pattern.finditer(text)]
    for m in re.finditer(r"\btorch\.load\s*\(", text):  # only with weights_only=True
        depth, end = 0, m.end() - 1
        for end in range(m.end() - 1, len(text)):
            depth += {"(": 1, ")": -1}.get(text[end], 0)
            if depth == 0:
                break
        if not re.search(r"weights_only\s*=\s*True", text[m.start():end]):
            found.append(f"{path}: torch.load without weights_only=True")
    return found


def test_nothing_in_src_unpickles_untrusted_data() -> None:
    files = sorted((ROOT / "src").rglob("*.py"))
    assert len(files) > 20
    found = [hit for path in files for hit in unsafe_loads(path.relative_to(ROOT),
                                                            path.read_text())]
    assert not found, found
    # the scanner itself catches what it must (so that this test cannot pass vacuously)
    bad = ("x = pickle.load(f)\ny = torch.load(p)\nz = torch.load(p,\n    map_location='cpu')\n"
           "np.load(f, allow_pickle=True)\nyaml.load(s)\nclass U(pickle.Unpickler): pass\n")
    assert len(unsafe_loads(Path("src/attnconv/x.py"), bad)) == 6
    assert not unsafe_loads(Path("x.py"), "torch.load(p, map_location='cpu', weights_only=True)")
    assert unsafe_loads(RESTRICTED_UNPICKLER, "torch.load(p)")
