"""Nothing unsafe: bad input is refused with a precise exception (API) or one line (CLI).

The readers themselves are fuzzed in tests/data (test_data_cifar.py, test_data_idx.py,
test_data_safe_pickle.py); here every failure is followed up to the command line: exit code
non-zero, exactly one line on stderr naming the problem and the fix, no traceback (a traceback
only with --debug), and no half-written output.
"""

from __future__ import annotations

import errno
import os
import pickle
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
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
from test_reliability_helpers import (
    ENV,
    SMALL,
    assert_no_partial_files,
    one_line,
    overrides,
    reference_run,
)

ROOT = Path(__file__).resolve().parents[1]
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
                                      ["cut.safetensors is truncated or corrupted"],
                                      CheckpointError, prepare=_truncated_checkpoint),
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

    with pytest.raises(case.error):  # --debug: the exception (and its traceback) comes out
        main(["--debug", *(a.replace("name=x", "name=x-debug") for a in argv)])


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
