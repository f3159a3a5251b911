"""The restricted unpickler refuses every global outside the CIFAR allow-list."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from attnconv.data.safe_pickle import load_pickle
from attnconv.errors import DatasetError, UnsafePickleError


def _reducing_to(func, *args):
    class Payload:
        def __reduce__(self):
            return (func, args)

    return Payload()


def _exploits(marker: Path) -> dict[str, bytes]:
    import os
    import subprocess

    command = f"touch {marker}"
    code = f"open({str(marker)!r}, 'w').close()"
    return {
        "os.system": pickle.dumps(_reducing_to(os.system, command), protocol=2),
        "eval": pickle.dumps(_reducing_to(eval, code), protocol=2),
        "exec-protocol4": pickle.dumps(_reducing_to(exec, code), protocol=4),
        "subprocess.Popen": pickle.dumps(
            _reducing_to(subprocess.Popen, ["touch", str(marker)]), protocol=2),
        # hand-written protocol-0 pickle, as an attacker would write it
        "posix.system-proto0": f"cposix\nsystem\n(S'{command}'\ntR.".encode(),
        "builtins-via-py2-name": f"c__builtin__\neval\n(S\"{code}\"\ntR.".encode(),
        "nested-in-dict": pickle.dumps({b"data": _reducing_to(os.system, command)}, protocol=2),
    }


@pytest.mark.parametrize("name", list(_exploits(Path("x"))))
def test_code_executing_pickles_are_refused(tmp_path: Path, name: str) -> None:
    marker = tmp_path / "marker"
    payload = _exploits(marker)[name]
    with pytest.raises(UnsafePickleError, match=r"refused to load .*batch") as info:
        load_pickle(tmp_path / "batch", payload)
    assert "global" in str(info.value)
    assert not marker.exists()


def test_refused_global_is_named(tmp_path: Path) -> None:
    import os

    with pytest.raises(UnsafePickleError, match=r"(posix|os|nt)\.system"):
        load_pickle(tmp_path / "f", pickle.dumps(_reducing_to(os.system, "true"), protocol=2))


def test_allowed_content_round_trips(tmp_path: Path) -> None:
    value = {b"data": np.arange(12, dtype=np.uint8).reshape(3, 4), b"labels": [1, 2, 3],
             b"names": [b"a", b"b"], b"count": np.int64(7)}
    for protocol in (2, 4):  # 5 pickles arrays out-of-band (_frombuffer): never in CIFAR
        loaded = load_pickle(tmp_path / "f", pickle.dumps(value, protocol=protocol))
        np.testing.assert_array_equal(loaded[b"data"], value[b"data"])
        assert loaded[b"labels"] == [1, 2, 3] and loaded[b"names"] == [b"a", b"b"]
        assert loaded[b"count"] == 7


def test_codecs_stand_in_only_rebuilds_latin1(tmp_path: Path) -> None:
    payload = b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x06\x00\x00\x00rot_13\x86R."
    with pytest.raises(DatasetError, match="corrupted"):
        load_pickle(tmp_path / "f", payload)


def test_persistent_ids_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsafePickleError):
        load_pickle(tmp_path / "f", b"\x80\x02X\x01\x00\x00\x00xQ.")


def test_garbage_is_a_dataset_error(tmp_path: Path) -> None:
    for data in (b"", b"\x80", b"\x80\x02}(", b"not a pickle at all", bytes(range(256))):
        with pytest.raises(DatasetError, match="f"):
            load_pickle(tmp_path / "f", data)
