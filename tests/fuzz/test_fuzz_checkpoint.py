"""Fuzzing the checkpoint reader: mutated files, random headers and random metadata only ever
end in CheckpointError naming the file -- or load, when the mutation changed nothing (bytes) or
nothing that matters (metadata) -- each under a memory cap (``memory_capped``)."""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fuzzkit import FUZZ_SETTINGS, mutations
from hypothesis import event, given, settings
from hypothesis import strategies as st
from safetensors.torch import save as st_save

from attnconv.errors import CheckpointError
from attnconv.train.checkpoint import (
    _PLACEHOLDER,
    DIGEST_KEY,
    FORMAT,
    META_KEY,
    _seal,
    checkpoint_from_bytes,
    load_checkpoint,
)
from attnconv.train.config import config_from_dict
from attnconv.train.model_io import build_checkpoint_model
from attnconv.train.optim import make_optimizer, make_scheduler
from attnconv.train.state import restore

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2 ** 70), 2 ** 70) | st.floats()
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=4),
    max_leaves=12)


@pytest.fixture(scope="module")
def sample(quadratic_run: Path) -> tuple[Path, bytes]:
    """A real resumable checkpoint (end of epoch 2 of a tiny sa-quadratic run) and its bytes."""
    path = quadratic_run / "checkpoints" / "last.safetensors"
    return path, path.read_bytes()


@pytest.fixture
def rng_kept() -> Iterator[None]:
    """restore() sets the global RNGs: put them back afterwards."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    yield
    random.setstate(states[0])
    np.random.set_state(states[1])
    torch.set_rng_state(states[2])


@settings(FUZZ_SETTINGS, max_examples=300)
@given(draw=st.data())
def test_mutated_files_raise_checkpoint_error_or_are_unchanged(
        sample: tuple[Path, bytes], memory_capped: None, draw: st.DataObject) -> None:
    """Bit flips, truncation, insertion, deletion, duplication, header bytes and extreme words
    anywhere in the header (the first ``8 + header length`` bytes) or the tensors."""
    path, original = sample
    n_header = 8 + int.from_bytes(original[:8], "little")
    mutated = draw.draw(mutations(original, header=n_header))
    try:
        ckpt = checkpoint_from_bytes(mutated, path)
    except CheckpointError as err:
        assert str(path) in str(err)
        event("refused")
        return
    event("unchanged, loaded")
    assert mutated == original  # only a no-op mutation may load
    assert ckpt.meta["progress"]["global_step"] == 8


@settings(FUZZ_SETTINGS)
@given(header=st.dictionaries(st.text(max_size=20), JSON, max_size=5)
       | st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
       tail=st.binary(max_size=64), declared=st.none() | st.integers(0, 2 ** 64 - 1))
def test_random_headers_raise_checkpoint_error(memory_capped: None, header: Any, tail: bytes,
                                               declared: int | None) -> None:
    """A random JSON (or random text) header with any declared length: never loads."""
    body = (json.dumps(header) if isinstance(header, dict) else header).encode("utf-8",
                                                                           "replace")
    length = len(body) if declared is None else declared
    data = length.to_bytes(8, "little") + body + tail
    with pytest.raises(CheckpointError, match=r"random\.safetensors"):
        checkpoint_from_bytes(data, "random.safetensors")


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every key path in ``value`` (long lists: their first and last entries only)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield (*prefix, key)
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i in sorted({0, len(value) - 1} if len(value) > 8 else set(range(len(value)))):
            yield (*prefix, i)
            yield from _paths(value[i], (*prefix, i))


@settings(FUZZ_SETTINGS, max_examples=80)
@given(draw=st.data())
def test_random_metadata_in_a_sealed_file_is_refused_or_harmless(
        sample: tuple[Path, bytes], tmp_path: Path, memory_capped: None, rng_kept: None,
        draw: st.DataObject) -> None:
    """One to three edits of a correctly sealed file's metadata (a random JSON value, a
    deletion, an integer off by one) -- what only the schema and the cross-checks can catch.
    Loading, rebuilding the model and restoring the training state either raise
    CheckpointError naming the file or succeed."""
    path, _ = sample
    good = load_checkpoint(path)
    doc = copy.deepcopy(good.meta)
    paths = sorted(_paths(doc), key=repr)
    for _ in range(draw.draw(st.integers(1, 3))):
        where = draw.draw(st.sampled_from(paths))
        parent = doc
        try:
            for key in where[:-1]:
                parent = parent[key]
            old = parent[where[-1]]
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit removed or replaced it
        kind = draw.draw(st.sampled_from(("value", "delete", "nudge")))
        if kind == "delete" and isinstance(parent, dict):
            del parent[where[-1]]
        elif kind == "nudge" and isinstance(old, int | float) and not isinstance(old, bool):
            parent[where[-1]] = old + draw.draw(st.sampled_from((-1, 1)))
        else:
            parent[where[-1]] = draw.draw(JSON)
    forged = tmp_path / "forged.safetensors"
    header = json.dumps({**doc, "format": FORMAT})
    forged.write_bytes(_seal(st_save(good.tensors, metadata={META_KEY: header,
                                                             DIGEST_KEY: _PLACEHOLDER})))
    try:
        ckpt = load_checkpoint(forged)
        model = build_checkpoint_model(ckpt)
        cfg = config_from_dict(ckpt.meta["config"])
        optimizer = make_optimizer(model, cfg)
        scheduler = make_scheduler(optimizer, cfg, steps_per_epoch=4)
        restore(ckpt, model.train(), optimizer, scheduler)
    except CheckpointError as err:
        assert str(forged) in str(err)
        event("refused: " + ("inconsistent" if "inconsistent" in str(err) else "invalid"))
    else:
        event("loaded and restored")
