"""Models: registry, exact parameter counts (Table 1), forward shapes, errors, no-decay names."""

from __future__ import annotations

import pytest
import torch

from attnconv.errors import ConfigError, ShapeError
from attnconv.flops import count_parameters, format_count
from attnconv.layers import SelfAttention2d
from attnconv.models import (
    ImageClassifier,
    SANet,
    SpaceToDepth,
    create_model,
    list_models,
    register_model,
)

SA_MODELS = ["sa-quadratic", "sa-quadratic-full", "sa-quadratic-16heads", "sa-learned",
             "sa-learned-content"]
ALL_MODELS = [*SA_MODELS, "resnet18"]
SMALL = {"hidden_size": 32, "num_layers": 2, "heads": 3, "ffn_size": 48}

# Table 1 (paper): parameter counts derived from the architecture, and the paper's rounding.
EXACT_PARAMS = {
    "sa-quadratic": (12_086_844, "12.1M"),
    "sa-learned": (12_278_682, "12.3M"),
    "sa-learned-content": (29_484_282, "29.5M"),
    "resnet18": (11_173_962, "11.2M"),
}


def meta_model(name: str, **kwargs: object) -> ImageClassifier:
    """A full-size model on the meta device: parameters are counted, never allocated."""
    with torch.device("meta"):
        return create_model(name, **kwargs)


def linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def sa_params(heads: int, encoding_params: int, *, d: int = 400, ffn: int = 512, layers: int = 6,
              tokens_in: int = 12, classes: int = 10) -> int:
    """Parameters of the paper's network from its description (PAPER section 3)."""
    layer = (encoding_params + linear(heads * d, d)  # MHSA: encoding + W_out (identity values)
             + linear(d, d) + 2 * d  # Dense + LayerNorm
             + linear(d, ffn) + linear(ffn, d) + 2 * d)  # FFN + LayerNorm
    return linear(tokens_in, d) + layers * layer + linear(d, classes)


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------
def test_registry_lists_the_paper_models() -> None:
    assert set(ALL_MODELS) <= set(list_models())
    assert list_models("sa-quadratic*") == ["sa-quadratic", "sa-quadratic-16heads",
                                            "sa-quadratic-full"]
    model = create_model("sa-quadratic", **SMALL)
    assert isinstance(model, SANet) and model.model_name == "sa-quadratic"


def test_unknown_model_suggests_the_closest_name() -> None:
    with pytest.raises(ConfigError, match=r"did you mean 'sa-quadratic'.*known models: .*resnet18"):
        create_model("sa-quadratc")


@pytest.mark.parametrize(("name", "key", "suggestion"), [
    ("sa-quadratic", "hidden_dim", "hidden_size"),
    ("sa-learned", "num_layer", "num_layers"),
    ("resnet18", "base_widht", "base_width"),
])
def test_unknown_override_suggests_the_option(name: str, key: str, suggestion: str) -> None:
    with pytest.raises(ConfigError, match=rf"{name} has no option '{key}' \(did you mean "
                                          rf"'{suggestion}'\?\)"):
        create_model(name, **{key: 1})


def test_duplicate_registration_is_refused() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_model(name="resnet18")(lambda **kw: create_model("resnet18", **kw))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"image_size": 31}, r"not divisible .* downsample=2; pad the images to 32x32"),
    ({"image_size": (24, 34), "downsample": 3}, r"24x34 .* downsample=3; pad .* 24x36"),
    ({"hidden_size": 0}, "hidden_size must be a positive integer"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
    ({"encoding": "gaussian"}, "encoding must be one of"),
    ({"attn_dropout_mode": "shared"}, "attn_dropout_mode must be one of batch, probabilities"),
    ({"content": True, "encoding": "learned", "attn_dropout_mode": "batch"},
     r"'batch' needs positional-only attention; with content=True use .*'probabilities'"),
    ({"encoding": "quadratic-full", "attn_dropout_mode": "factors"},
     r"'factors' needs a separable encoding"),
])
def test_invalid_config_values(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        create_model("sa-quadratic", **{**SMALL, **kwargs})


# --------------------------------------------------------------------------------------------
# Parameter counts at CIFAR-10 shape
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(EXACT_PARAMS))
def test_parameter_counts_match_table1_exactly(name: str) -> None:
    exact, paper = EXACT_PARAMS[name]
    count = count_parameters(meta_model(name))
    assert count == exact
    assert format_count(count, 3) == paper  # Table 1 to three significant digits


def test_parameter_counts_follow_from_the_architecture() -> None:
    # Encoding parameters per layer: quadratic: centre (2) + width (1) per head;
    # full: centre (2) + S (4); learned: 2 tables of 31 x 400 + per-head scores 2 x 400;
    # learned + content: query/key Linear(400 -> 9 x 400) + 2 tables of 31 x 200.
    quadratic = sa_params(9, 9 * 3)
    assert quadratic == EXACT_PARAMS["sa-quadratic"][0]
    assert sa_params(9, 2 * 31 * 400 + 9 * 2 * 400) == EXACT_PARAMS["sa-learned"][0]
    content = 2 * linear(400, 9 * 400) + 2 * 31 * 200
    assert sa_params(9, content) == EXACT_PARAMS["sa-learned-content"][0]
    assert count_parameters(meta_model("sa-quadratic-full")) == sa_params(9, 9 * 6)
    assert count_parameters(meta_model("sa-quadratic-16heads")) == sa_params(16, 16 * 3)


def test_resnet18_count_from_its_layers() -> None:
    def conv(c_in: int, c_out: int, k: int) -> int:
        return c_in * c_out * k * k

    def block(c_in: int, c_out: int) -> int:
        shortcut = conv(c_in, c_out, 1) + 2 * c_out if c_in != c_out else 0
        return conv(c_in, c_out, 3) + conv(c_out, c_out, 3) + 4 * c_out + shortcut

    widths = [64, 128, 256, 512]
    pairs = zip([64, *widths[:-1]], widths, strict=True)  # (stage input, stage width)
    stages = sum(block(c_in, c) + block(c, c) for c_in, c in pairs)
    expected = conv(3, 64, 3) + 2 * 64 + stages + linear(512, 10)
    assert expected == EXACT_PARAMS["resnet18"][0]


def test_learned_tables_are_sized_from_the_image() -> None:
    model = meta_model("sa-learned", image_size=(24, 32))
    enc = model.attention_layers()[0].encoding
    assert enc.row_embeddings.shape == (2 * 12 - 1, 400)
    assert enc.col_embeddings.shape == (2 * 16 - 1, 400)
    assert meta_model("sa-quadratic-16heads").attention_layers()[0].heads == 16
    content = meta_model("sa-learned-content").attention_layers()[0]
    assert content.encoding.row_embeddings.shape == (31, 200)
    assert content.query.weight.shape == (9 * 400, 400)


# --------------------------------------------------------------------------------------------
# Forward passes (small variants)
# --------------------------------------------------------------------------------------------
SHAPES = [(3, 32, 32), (1, 28, 28), (3, 24, 32)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_shapes(name: str, shape: tuple[int, int, int]) -> None:
    c, h, w = shape
    kwargs = {"base_width": 4} if name == "resnet18" else SMALL
    model = create_model(name, num_classes=7, in_chans=c, image_size=(h, w), **kwargs).eval()
    x = torch.randn(2, c, h, w)  # (B, C, H, W)
    with torch.no_grad():
        logits = model(x)
        features = model.forward_features(x)
        assert torch.allclose(model.forward_head(features), logits, atol=1e-6)
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()
    if name != "resnet18":
        assert features.shape == (2, h // 2, w // 2, 32)  # channels-last tokens


def test_paper_model_runs_on_cifar_shape() -> None:
    model = create_model("sa-quadratic").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_downsample_one_and_smaller_inputs() -> None:
    model = create_model("sa-learned", image_size=8, downsample=1, **SMALL).eval()
    assert model(torch.randn(1, 3, 8, 8)).shape == (1, 10)
    assert model(torch.randn(1, 3, 5, 7)).shape == (1, 10)  # smaller than image_size


def test_training_step_reaches_the_gaussian_parameters() -> None:
    torch.manual_seed(0)
    model = create_model("sa-quadratic-full", **SMALL).train()
    loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 16, 16)),
                                             torch.tensor([0, 1, 2, 3]))
    loss.backward()
    params = dict(model.named_parameters())
    for name in model.no_weight_decay():
        assert params[name].grad is not None and params[name].grad.abs().sum() > 0


@pytest.mark.parametrize("name", SA_MODELS)
def test_attention_dropout_mode_defaults_to_the_authors(name: str) -> None:
    """One mask per batch for positional-only attention, one per image with content."""
    expected = "probabilities" if name == "sa-learned-content" else "batch"
    model = meta_model(name)
    assert model.config.attn_dropout_mode == expected
    assert {a.attn_dropout_mode for a in model.attention_layers()} == {expected}
    if expected == "batch":  # per-image masks stay selectable
        other = meta_model(name, attn_dropout_mode="probabilities")
        assert {a.attn_dropout_mode for a in other.attention_layers()} == {"probabilities"}


def test_dropout_only_in_training() -> None:
    model = create_model("sa-learned-content", **SMALL)
    x = torch.randn(2, 3, 16, 16)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


# --------------------------------------------------------------------------------------------
# Attention layers and weight decay
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SA_MODELS)
def test_attention_layers_in_order(name: str) -> None:
    model = create_model(name, num_layers=3, **{k: v for k, v in SMALL.items()
                                                if k != "num_layers"})
    layers = model.attention_layers()
    assert len(layers) == 3 and all(isinstance(a, SelfAttention2d) for a in layers)
    assert layers == [m for m in model.modules() if isinstance(m, SelfAttention2d)]
    assert layers == [block.attn for block in model.layers]
    assert layers[0].heads == 3  # the override wins over the variant's default
    assert layers[0].value is None  # identity values, D_h = D (Theorem 1)
    assert layers[0].out.in_features == layers[0].heads * 32


@pytest.mark.parametrize("name", ALL_MODELS)
def test_no_weight_decay_names_the_gaussian_parameters(name: str) -> None:
    model = meta_model(name)
    names = model.no_weight_decay()
    params = dict(model.named_parameters())
    assert names <= set(params)
    gaussian = {n for n in params if n.endswith((".centers", ".log_alpha", ".s"))}
    assert gaussian <= names
    if name.startswith("sa-quadratic"):
        per_layer = 2  # centres and widths (isotropic) or centres and S (full)
        assert len(names) == 6 * per_layer
    else:
        assert names == set()


# --------------------------------------------------------------------------------------------
# Input errors
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["sa-quadratic", "resnet18"])
def test_bad_inputs_raise_shape_errors(name: str) -> None:
    kwargs = {"base_width": 4} if name == "resnet18" else SMALL
    model = create_model(name, **kwargs)
    with pytest.raises(ShapeError, match=r"\(B, 3, H, W\).*unsqueeze\(0\)"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(ShapeError, match=r"channels-last: pass x.permute\(0, 3, 1, 2\)"):
        model(torch.randn(2, 32, 32, 3))
    with pytest.raises(ShapeError, match="in_chans=1"):
        model(torch.randn(2, 1, 32, 32))


def test_odd_image_size_names_the_fix() -> None:
    model = create_model("sa-quadratic", **SMALL)
    with pytest.raises(ShapeError, match=r"31x32 images: crop or pad them to 30x32 or 32x32"):
        model(torch.randn(1, 3, 31, 32))


def test_learned_model_refuses_larger_images() -> None:
    model = create_model("sa-learned", image_size=16, **SMALL)
    with pytest.raises(ValueError, match=r"max_size.*image_size=\(20, 16\)"):
        model(torch.randn(1, 3, 20, 16))


# --------------------------------------------------------------------------------------------
# Space-to-depth
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("factor", [1, 2, 4])
def test_space_to_depth_is_invertible_and_blockwise(factor: int) -> None:
    s2d = SpaceToDepth(factor)
    x = torch.randn(2, 3, 8, 12)  # (B, C, H, W)
    tokens = s2d(x)  # (B, H/r, W/r, C r r)
    assert tokens.shape == (2, 8 // factor, 12 // factor, 3 * factor**2)
    assert torch.equal(s2d.inverse(tokens), x)
    # token (i, j) holds the r x r block at (r i, r j), channel-major like pixel_unshuffle
    expected = torch.nn.functional.pixel_unshuffle(x, factor).permute(0, 2, 3, 1)
    assert torch.equal(tokens, expected)
    assert torch.equal(tokens[1, 1, 0].view(3, factor, factor),
                       x[1, :, factor:2 * factor, :factor])
