"""``SelfAttention2d.algorithm()`` gives the same answer for every configuration and mode.

The table below was computed before the encodings declared their capabilities (issue #13:
the algorithm was then chosen by an ``isinstance`` chain on the encoding classes); it is kept
as the expectation, so that a change of the algorithm choice is a visible change of this table.

Each row is a layer configuration; its answers are one string per ``impl`` (:data:`IMPLS`),
of one letter per train/eval x grad mode (grad enabled, ``no_grad``, every
parameter frozen) x device/tokens, in the order of :func:`_modes`:
``r`` reference, ``s`` separable, ``d`` dense, ``f`` fused, ``E`` ``ValueError``
(``impl`` names an algorithm that is not exact there). ``ValueError`` as a whole row: the
layer refuses the configuration.
"""

from __future__ import annotations

import itertools
import sys

import pytest
import torch

from attnconv.layers import SelfAttention2d
from attnconv.layers.attention import reference_attention

IMPLS = ("auto", "reference", "separable", "dense", "fused")
ENCODINGS = ("quadratic", "quadratic-full", "quadratic-full/diag", "quadratic-full/diag-frozen",
             "learned", "none")
DROPOUT = ((0.0, "probabilities"), (0.1, "probabilities"), (0.1, "batch"), (0.1, "factors"))
LETTER = {"reference": "r", "separable": "s", "dense": "d", "fused": "f"}


def _modes() -> list[tuple[bool, str, str]]:
    """(training, grad mode, device/tokens) in the table's order (inner loops)."""
    return list(itertools.product((True, False), ("grad", "no_grad", "frozen"),
                                  ("cpu/None", "cpu/64", "meta/None")))


def _configs() -> list[tuple[str, bool, bool, float, str]]:
    return [(enc, content, vp, p, mode)
        for enc in ENCODINGS for content in (False, True) for vp in (False, True)
        for p, mode in DROPOUT]


def _key(enc: str, content: bool, vp: bool, p: float, mode: str) -> str:
    return f"{enc}{'+content' if content else ''}{'+value' if vp else ''} p={p} {mode}"


def _layer(enc: str, content: bool, vp: bool, p: float, mode: str, impl: str,
           device: str) -> SelfAttention2d:
    name, _, variant = enc.partition("/")
    torch.manual_seed(0)
    layer = SelfAttention2d(4, 2, encoding=name, content=content, value_proj=vp, attn_dropout=p,
                            attn_dropout_mode=mode, max_size=8, impl=impl)
    if variant:
        assert layer.encoding is not None
        s = layer.encoding.get_parameter("s")
        with torch.no_grad():
            s.copy_(torch.diag_embed(torch.tensor([[1.0, 2.0], [0.5, 1.5]])))
        s.requires_grad_(variant != "diag-frozen")
    return layer.to(device) if device == "meta" else layer


def row(enc: str, content: bool, vp: bool, p: float, mode: str) -> tuple[str, ...] | str:
    """The answers of one configuration, one string per ``impl`` (see the module docstring)."""
    letters = []
    for impl in IMPLS:
        layers = {}
        for device in ("cpu", "meta"):
            try:
                layers[device] = _layer(enc, content, vp, p, mode, impl, device)
            except ValueError:
                return "ValueError"
        for training, grad, where in _modes():
            device, tokens = where.split("/")
            layer = layers[device]
            layer.train(training)
            for param in layer.parameters():
                param.requires_grad_(grad != "frozen")
            if enc.endswith("diag-frozen"):
                assert layer.encoding is not None
                layer.encoding.get_parameter("s").requires_grad_(False)
            try:
                with torch.set_grad_enabled(grad != "no_grad"):
                    answer = layer.algorithm(None if tokens == "None" else int(tokens))
                letters.append(LETTER[answer])
            except ValueError:
                letters.append("E")
    n = len(_modes())
    return tuple("".join(letters[i:i + n]) for i in range(0, len(letters), n))


EXPECTED: dict[str, tuple[str, ...] | str] = {
    "quadratic p=0.0 probabilities":
        ("ssssssssssssssssss", "rrrrrrrrrrrrrrrrrr", "ssssssssssssssssss",
         "dddddddddddddddddd", "EEEEEEEEEEEEEEEEEE"),
    "quadratic p=0.1 probabilities":
        ("dddddddddsssssssss", "rrrrrrrrrrrrrrrrrr", "EEEEEEEEEsssssssss",
         "dddddddddddddddddd", "EEEEEEEEEEEEEEEEEE"),
    "quadratic p=0.1 batch":
        ("dddddddddsssssssss", "rrrrrrrrrrrrrrrrrr", "EEEEEEEEEsssssssss",
         "dddddddddddddddddd", "EEEEEEEEEEEEEEEEEE"),
    "quadratic p=0.1 factors":
        ("ssssssssssssssssss", "rrrrrrrrrrrrrrrrrr", "ssssssssssssssssss",
         "EEEEEEEEEddddddddd", "EEEEEEEEEEEEEEEEEE"),
    "quadratic+value p=0.0 probabilities":
        ("ssssssssssssssssss", "rrrrrrrrrrrrrrrrrr", "ssssssssssssssssss",
         "EEEEEEEEEEEEEEEEEE", "EEEEEEEEEEEEEEEEEE"),
    "quadratic+value p=0.1 probabilities":
        ("rrrrrrrrrsssssssss", "rrrrrrrrrrrrrrrrrr", "EEEEEEEEEsssssssss",
         "EEEEEEEEEEEEEEEEEE", "EEEEEEEEEEEEEEEEEE"),
    "quadratic+value p=0.1 batch":
        ("rrrrrrrrrsssssssss", "rrrrrrrrrrrrrrrrrr", "EEEEEEEEEsssssssss",
         "EEEEEEEEEEEEEEEEEE", "EEEEEEEEEEEEEEEEEE"),
    "quadratic+value p=0.1 factors":
        ("rrrrrrrrrsssssssss", "rrrrrrrrrrrrrrrrrr", "EEEEEEEEEsssssssss",
         "EEEEEEEEEEEEEEEEEE", "EEEEEEEEEEEEEEEEEE"),
    "quadratic+content p=0.0 probabilities":
        ("rrffrffrfrrffrffrf", "rrrrrrrrrrrrrrrrrr", "EEEEEEEEEEEEEEEEEE",
         "EEEEEEEEEEEEEEEEEE", "ffffffffffffffffff"),
    "quadratic+content p=0.1 probabilities":
        ("rrffrffrfrrffrffrf", "rrrrrrrrrrrrrrrrrr", "EEEEEEEEEEEEEEEEEE",
         "EEEEEEEEEEEEEEEEEE", "ffffffffffffffffff"),
    "quadratic+content p=0.1 batch": "ValueError",
    "quadratic+content p=0.1 factors": "ValueError",
    "quadratic+content+value p=0.0 probabilities":
        ("rrffrffrfrrffrffrf", "rrrrrrrrrrrrrrrrrr", "EEEEEEEEEEEEEEEEEE",
         "EEEEEEEEEEEEEEEEEE", "ffffffffffffffffff"),
    "quadratic+content+value p=0.1 probabilities":
        ("rrffrffrfrrffrffrf", "rrrrrrrrrrrrrrrrrr", "EEEEEEEEEEEEEEEEEE",
         "EEEEEEEEEEEEEEEEEE", "ffffffffffffffffff"),
    "quadratic+content+value p=0.1 batch": "ValueError",
    "quadratic+content+value p=0.1 factors": "ValueError",
    "quadratic-full p=0.0 probabilities":
        ("dddddddddddddddddd", "rrrrrrrrrrrrrrrrrr", "EEEEEEEEEEEEEEEEEE",
         "dddddddddddddddddd", "EEEEEEEEEEEEEEEEEE"),
    "quadratic-full p=0.1 probabilities":
        ("dddddddddddddddddd", "rrrrrrrrrrrrrrrrrr", "EEEEEEEEEEEEEEEEEE",
         "dddddddddddddddddd", "EEEEEEEEEEEEEEEEEE"),
    "quadratic-full p=0.1 batch":
        ("dddddddddddddddddd", "rrrrrrrrrrrrrrrrrr", "EEEEEEEEEEEEEEEEEE",
         "dddddddddddddddddd", "EEEEEEEEEEEEEEEEEE"),
    "quadratic-full p=0.1 factors": "ValueError",
    "quadratic-full+value p=0.0 probabilities":
        ("rrrrrrrrrrrrrrrrrr", "rrrrrrrrrrrrrrrrrr", "EEEEEEEEEEEEEEEEEE",
         "EEEEEEEEEEEEEEEEEE", "EEEEEEEEEEEEEEEEEE"),
    "quadratic-full+value p=0.1 probabilities":
        ("rrrrrrrrrrrrrrrrrr", "rrrrrrrrrrrrrrrrrr", "EEEEEEEEEEEEEEEEEE",
         "EEEEEEEEEEEEEEEEEE", "EEEEEEEEEEEEEEEEEE"),
    "quadratic-full+value p=0.1 batch":
        ("rrrrrrrrrrrrrrrrrr", "rrrrrrrrrrrrrrrrrr", "EEEEEEEEEEEEEEEEEE",
         "EEEEEEEEEEEEEEEEEE", "EEEEEEEEEEEEEEEEEE"),
    "quadratic-full+value p=0.1 factors": "ValueError",
    "quadratic-full+content p=0.0 probabilities":
        ("rrffrffrfrrffrffrf", "rrrrrrrrrrrrrrrrrr", "EEEEEEEEEEEEEEEEEE",
         "EEEEEEEEEEEEEEEEEE", "ffffffffffffffffff"),
    "quadratic-full+content p=0.1 probabilities":
        ("rrffrffrfrrffrffrf", "rrrrrrrrrrrrrrrrrr", "EEEEEEEEEEEEEEEEEE",
         "EEEEEEEEEEEEEEEEEE", "ffffffffffffffffff"),
    "quadratic-full+content p=0.1 batch": "ValueError",
    "quadratic-full+content p=0.1 factors": "ValueError",
    "quadratic-full+content+value p=0.0 probabilities":
        ("rrffrffrfrrffrffrf", "rrrrrrrrrrrrrrrrrr", "EEEEEEEEEEEEEEEEEE",
         "EEEEEEEEEEEEEEEEEE", "ffffffffffffffffff"),
    "quadratic-full+content+value p=0.1 probabilities":
        ("rrffrffrfrrffrffrf", "rrrrrrrrrrrrrrrrrr", "EEEEEEEEEEEEEEEEEE",
         "EEEEEEEEEEEEEEEEEE", "ffffffffffffffffff"),
    "quadratic-full+content+value p=0.1 batch": "ValueError",
    "quadratic-full+content+value p=0.1 factors": "ValueError",
    "quadratic-full/diag p=0.0 probabilities":
        ("dddssdssddddssdssd", "rrrrrrrrrrrrrrrrrr", "EEEssEssEEEEssEssE",
         "dddddddddddddddddd", "EEEEEEEEEEEEEEEEEE"),
    "quadratic-full/diag p=0.1 probabilities":
        ("ddddddddddddssdssd", "rrrrrrrrrrrrrrrrrr", "EEEEEEEEEEEEssEssE",
         "dddddddddddddddddd", "EEEEEEEEEEEEEEEEEE"),
    "quadratic-full/diag p=0.1 batch":
        ("ddddddddddddssdssd", "rrrrrrrrrrrrrrrrrr", "EEEEEEEEEEEEssEssE",
         "dddddddddddddddddd", "EEEEEEEEEEEEEEEEEE"),
    "quadratic-full/diag p=0.1 factors": "ValueError",
    "quadratic-full/diag+value p=0.0 probabilities":
        ("rrrssrssrrrrssrssr", "rrrrrrrrrrrrrrrrrr", "EEEssEssEEEEssEssE",
         "EEEEEEEEEEEEEEEEEE", "EEEEEEEEEEEEEEEEEE"),
    "quadratic-full/diag+value p=0.1 probabilities":
        ("rrrrrrrrrrrrssrssr", "rrrrrrrrrrrrrrrrrr", "EEEEEEEEEEEEssEssE",
         "EEEEEEEEEEEEEEEEEE", "EEEEEEEEEEEEEEEEEE"),
    "quadratic-full/diag+value p=0.1 batch":
        ("rrrrrrrrrrrrssrssr", "rrrrrrrrrrrrrrrrrr", "EEEEEEEEEEEEssEssE",
         "EEEEEEEEEEEEEEEEEE", "EEEEEEEEEEEEEEEEEE"),
    "quadratic-full/diag+value p=0.1 factors": "ValueError",
    "quadratic-full/diag+content p=0.0 probabilities":
        ("rrffrffrfrrffrffrf", "rrrrrrrrrrrrrrrrrr", "EEEEEEEEEEEEEEEEEE",
         "EEEEEEEEEEEEEEEEEE", "ffffffffffffffffff"),
    "quadratic-full/diag+content p=0.1 probabilities":
        ("rrffrffrfrrffrffrf", "rrrrrrrrrrrrrrrrrr", "EEEEEEEEEEEEEEEEEE",
         "EEEEEEEEEEEEEEEEEE", "ffffffffffffffffff"),
    "quadratic-full/diag+content p=0.1 batch": "ValueError",
    "quadratic-full/diag+content p=0.1 factors": "ValueError",
    "quadratic-full/diag+content+value p=0.0 probabilities":
        ("rrffrffrfrrffrffrf", "rrrrrrrrrrrrrrrrrr", "EEEEEEEEEEEEEEEEEE",
         "EEEEEEEEEEEEEEEEEE", "ffffffffffffffffff"),
    "quadratic-full/diag+content+value p=0.1 probabilities":
        ("rrffrffrfrrffrffrf", "rrrrrrrrrrrrrrrrrr", "EEEEEEEEEEEEEEEEEE",
         "EEEEEEEEEEEEEEEEEE", "ffffffffffffffffff"),
    "quadratic-full/diag+content+value p=0.1 batch": "ValueError",
    "quadratic-full/diag+content+value p=0.1 factors": "ValueError",
    "quadratic-full/diag-frozen p=0.0 probabilities":
        ("ssdssdssdssdssdssd", "rrrrrrrrrrrrrrrrrr", "ssEssEssEssEssEssE",
         "dddddddddddddddddd", "EEEEEEEEEEEEEEEEEE"),
    "quadratic-full/diag-frozen p=0.1 probabilities":
        ("dddddddddssdssdssd", "rrrrrrrrrrrrrrrrrr", "EEEEEEEEEssEssEssE",
         "dddddddddddddddddd", "EEEEEEEEEEEEEEEEEE"),
    "quadratic-full/diag-frozen p=0.1 batch":
        ("dddddddddssdssdssd", "rrrrrrrrrrrrrrrrrr", "EEEEEEEEEssEssEssE",
         "dddddddddddddddddd", "EEEEEEEEEEEEEEEEEE"),
    "quadratic-full/diag-frozen p=0.1 factors": "ValueError",
    "quadratic-full/diag-frozen+value p=0.0 probabilities":
        ("ssrssrssrssrssrssr", "rrrrrrrrrrrrrrrrrr", "ssEssEssEssEssEssE",
         "EEEEEEEEEEEEEEEEEE", "EEEEEEEEEEEEEEEEEE"),
    "quadratic-full/diag-frozen+value p=0.1 probabilities":
        ("rrrrrrrrrssrssrssr", "rrrrrrrrrrrrrrrrrr", "EEEEEEEEEssEssEssE",
         "EEEEEEEEEEEEEEEEEE", "EEEEEEEEEEEEEEEEEE"),
    "quadratic-full/diag-frozen+value p=0.1 batch":
        ("rrrrrrrrrssrssrssr", "rrrrrrrrrrrrrrrrrr", "EEEEEEEEEssEssEssE",
         "EEEEEEEEEEEEEEEEEE", "EEEEEEEEEEEEEEEEEE"),
    "quadratic-full/diag-frozen+value p=0.1 factors": "ValueError",
    "quadratic-full/diag-frozen+content p=0.0 probabilities":
        ("rrffrffrfrrffrffrf", "rrrrrrrrrrrrrrrrrr", "EEEEEEEEEEEEEEEEEE",
         "EEEEEEEEEEEEEEEEEE", "ffffffffffffffffff"),
    "quadratic-full/diag-frozen+content p=0.1 probabilities":
        ("rrffrffrfrrffrffrf", "rrrrrrrrrrrrrrrrrr", "EEEEEEEEEEEEEEEEEE",
         "EEEEEEEEEEEEEEEEEE", "ffffffffffffffffff"),
    "quadratic-full/diag-frozen+content p=0.1 batch": "ValueError",
    "quadratic-full/diag-frozen+content p=0.1 factors": "ValueError",
    "quadratic-full/diag-frozen+content+value p=0.0 probabilities":
        ("rrffrffrfrrffrffrf", "rrrrrrrrrrrrrrrrrr", "EEEEEEEEEEEEEEEEEE",
         "EEEEEEEEEEEEEEEEEE", "ffffffffffffffffff"),
    "quadratic-full/diag-frozen+content+value p=0.1 probabilities":
        ("rrffrffrfrrffrffrf", "rrrrrrrrrrrrrrrrrr", "EEEEEEEEEEEEEEEEEE",
         "EEEEEEEEEEEEEEEEEE", "ffffffffffffffffff"),
    "quadratic-full/diag-frozen+content+value p=0.1 batch": "ValueError",
    "quadratic-full/diag-frozen+content+value p=0.1 factors": "ValueError",
    "learned p=0.0 probabilities":
        ("ssssssssssssssssss", "rrrrrrrrrrrrrrrrrr", "ssssssssssssssssss",
         "dddddddddddddddddd", "EEEEEEEEEEEEEEEEEE"),
    "learned p=0.1 probabilities":
        ("dddddddddsssssssss", "rrrrrrrrrrrrrrrrrr", "EEEEEEEEEsssssssss",
         "dddddddddddddddddd", "EEEEEEEEEEEEEEEEEE"),
    "learned p=0.1 batch":
        ("dddddddddsssssssss", "rrrrrrrrrrrrrrrrrr", "EEEEEEEEEsssssssss",
         "dddddddddddddddddd", "EEEEEEEEEEEEEEEEEE"),
    "learned p=0.1 factors":
        ("ssssssssssssssssss", "rrrrrrrrrrrrrrrrrr", "ssssssssssssssssss",
         "EEEEEEEEEddddddddd", "EEEEEEEEEEEEEEEEEE"),
    "learned+value p=0.0 probabilities":
        ("ssssssssssssssssss", "rrrrrrrrrrrrrrrrrr", "ssssssssssssssssss",
         "EEEEEEEEEEEEEEEEEE", "EEEEEEEEEEEEEEEEEE"),
    "learned+value p=0.1 probabilities":
        ("rrrrrrrrrsssssssss", "rrrrrrrrrrrrrrrrrr", "EEEEEEEEEsssssssss",
         "EEEEEEEEEEEEEEEEEE", "EEEEEEEEEEEEEEEEEE"),
    "learned+value p=0.1 batch":
        ("rrrrrrrrrsssssssss", "rrrrrrrrrrrrrrrrrr", "EEEEEEEEEsssssssss",
         "EEEEEEEEEEEEEEEEEE", "EEEEEEEEEEEEEEEEEE"),
    "learned+value p=0.1 factors":
        ("rrrrrrrrrsssssssss", "rrrrrrrrrrrrrrrrrr", "EEEEEEEEEsssssssss",
         "EEEEEEEEEEEEEEEEEE", "EEEEEEEEEEEEEEEEEE"),
    "learned+content p=0.0 probabilities":
        ("rrffrffrfrrffrffrf", "rrrrrrrrrrrrrrrrrr", "EEEEEEEEEEEEEEEEEE",
         "EEEEEEEEEEEEEEEEEE", "ffffffffffffffffff"),
    "learned+content p=0.1 probabilities":
        ("rrffrffrfrrffrffrf", "rrrrrrrrrrrrrrrrrr", "EEEEEEEEEEEEEEEEEE",
         "EEEEEEEEEEEEEEEEEE", "ffffffffffffffffff"),
    "learned+content p=0.1 batch": "ValueError",
    "learned+content p=0.1 factors": "ValueError",
    "learned+content+value p=0.0 probabilities":
        ("rrffrffrfrrffrffrf", "rrrrrrrrrrrrrrrrrr", "EEEEEEEEEEEEEEEEEE",
         "EEEEEEEEEEEEEEEEEE", "ffffffffffffffffff"),
    "learned+content+value p=0.1 probabilities":
        ("rrffrffrfrrffrffrf", "rrrrrrrrrrrrrrrrrr", "EEEEEEEEEEEEEEEEEE",
         "EEEEEEEEEEEEEEEEEE", "ffffffffffffffffff"),
    "learned+content+value p=0.1 batch": "ValueError",
    "learned+content+value p=0.1 factors": "ValueError",
    "none p=0.0 probabilities": "ValueError",
    "none p=0.1 probabilities": "ValueError",
    "none p=0.1 batch": "ValueError",
    "none p=0.1 factors": "ValueError",
    "none+value p=0.0 probabilities": "ValueError",
    "none+value p=0.1 probabilities": "ValueError",
    "none+value p=0.1 batch": "ValueError",
    "none+value p=0.1 factors": "ValueError",
    "none+content p=0.0 probabilities":
        ("rrffrffrfrrffrffrf", "rrrrrrrrrrrrrrrrrr", "EEEEEEEEEEEEEEEEEE",
         "EEEEEEEEEEEEEEEEEE", "ffffffffffffffffff"),
    "none+content p=0.1 probabilities":
        ("rrffrffrfrrffrffrf", "rrrrrrrrrrrrrrrrrr", "EEEEEEEEEEEEEEEEEE",
         "EEEEEEEEEEEEEEEEEE", "ffffffffffffffffff"),
    "none+content p=0.1 batch": "ValueError",
    "none+content p=0.1 factors": "ValueError",
    "none+content+value p=0.0 probabilities":
        ("rrffrffrfrrffrffrf", "rrrrrrrrrrrrrrrrrr", "EEEEEEEEEEEEEEEEEE",
         "EEEEEEEEEEEEEEEEEE", "ffffffffffffffffff"),
    "none+content+value p=0.1 probabilities":
        ("rrffrffrfrrffrffrf", "rrrrrrrrrrrrrrrrrr", "EEEEEEEEEEEEEEEEEE",
         "EEEEEEEEEEEEEEEEEE", "ffffffffffffffffff"),
    "none+content+value p=0.1 batch": "ValueError",
    "none+content+value p=0.1 factors": "ValueError",
}


@pytest.mark.parametrize("config", _configs(), ids=lambda c: _key(*c))
def test_algorithm_matches_the_table(config: tuple[str, bool, bool, float, str]) -> None:
    assert row(*config) == EXPECTED[_key(*config)]


def test_reference_attention_forces_the_reference_everywhere() -> None:
    for config in _configs():
        if EXPECTED[_key(*config)] == "ValueError":
            continue
        for impl in IMPLS:
            layer = _layer(*config, impl=impl, device="cpu")
            with reference_attention():
                assert layer.algorithm() == "reference"
                with reference_attention(False):  # an inner block can turn it off again
                    try:
                        inner = LETTER[layer.algorithm()]
                    except ValueError:
                        inner = "E"
            # the layer's own answer: training, grad, cpu, tokens=None (first of its modes)
            assert inner == EXPECTED[_key(*config)][IMPLS.index(impl)][0]


if __name__ == "__main__":  # regenerate: python tests/layers/test_algorithm_table.py
    torch.set_default_dtype(torch.float64)
    for config in _configs():
        answers = row(*config)
        if isinstance(answers, str):
            print(f'    "{_key(*config)}": "{answers}",', file=sys.stdout)
        else:
            quoted = [f'"{a}"' for a in answers]
            print(f'    "{_key(*config)}":\n        ({", ".join(quoted[:3])},\n'
                  f'         {", ".join(quoted[3:])}),', file=sys.stdout)
