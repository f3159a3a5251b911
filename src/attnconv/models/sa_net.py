"""The paper's fully attentional network for CIFAR-10 (PAPER section 3).

Read top to bottom: :class:`SANetConfig` (every size, nanoGPT-style), :class:`TransformerLayer`
(one post-LayerNorm BERT layer around a :class:`SelfAttention2d`), :class:`SANet` (space-to-depth,
embedding, the layers, mean-pool classifier) and the registered variants at the end.

    images (B, 3, 32, 32) --2x2 space-to-depth--> tokens (B, 16, 16, 12)
      --Linear(12, 400)--> (B, 16, 16, 400) --6 x TransformerLayer--> (B, 16, 16, 400)
      --mean over the 256 tokens--> (B, 400) --Linear(400, 10)--> logits (B, 10)

There is no absolute position embedding and no class token: every positional cue comes from
the relative encoding inside the attention.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from attnconv.errors import ConfigError, ShapeError
from attnconv.layers import ENCODINGS, SelfAttention2d
from attnconv.layers.attention import DROPOUT_MODES
from attnconv.layers.grid import as_pair
from attnconv.models.base import ImageClassifier
from attnconv.models.registry import make_config, register_model
from attnconv.models.space_to_depth import SpaceToDepth


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class SANetConfig:
    """Sizes of the self-attention network; the defaults are the paper's CIFAR-10 model."""

    num_classes: int = 10
    in_chans: int = 3
    image_size: int | tuple[int, int] = 32  # (H, W) of training images; sizes learned tables
    downsample: int = 2  # space-to-depth factor r (1: one token per pixel)
    hidden_size: int = 400
    num_layers: int = 6
    heads: int | list[int] = 9  # per layer when a list (e.g. after pruning degenerate heads)
    ffn_size: int = 512  # intermediate width of the feed-forward block
    dropout: float = 0.1  # hidden dropout after the attention Dense and the FFN
    attn_dropout: float = 0.1  # dropout on the attention probabilities
    # How that dropout draws its mask (attnconv.layers.attention.DROPOUT_MODES). None: the
    # authors' code -- "batch" (one mask shared by the batch) for positional-only attention,
    # "probabilities" (a mask per image) with content attention. Resolved in __post_init__.
    attn_dropout_mode: str | None = None
    layer_norm_eps: float = 1e-12
    encoding: str = "quadratic"  # one of attnconv.layers.ENCODINGS
    content: bool = False  # add content-based attention q . k
    qk_dim: int | None = None  # query/key width per head (content); default hidden_size
    pos_dim: int | None = None  # learned positional-only table width; default hidden_size

    def __post_init__(self) -> None:
        if isinstance(self.image_size, list):
            self.image_size = (int(self.image_size[0]), int(self.image_size[1]))
        if isinstance(self.heads, list | tuple):
            self.heads = [int(h) if _is_int(h) else h for h in self.heads]
            if len(self.heads) != self.num_layers or not all(
                    _is_int(h) and h >= 1 for h in self.heads):
                raise ConfigError(f"heads must be a positive integer or a list of "
                                  f"num_layers={self.num_layers} positive integers, got "
                                  f"{self.heads!r}")
        elif not _is_int(self.heads) or self.heads < 1:
            raise ConfigError(f"heads must be a positive integer, got {self.heads!r}")
        for name in ("num_classes", "in_chans", "downsample", "hidden_size", "num_layers",
                     "ffn_size"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("qk_dim", "pos_dim"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                raise ConfigError(f"{name} must be a positive integer or None, got {value!r}")
        size = self.image_size
        if not (_is_int(size) or (isinstance(size, tuple) and len(size) == 2
                                  and all(_is_int(s) for s in size))):
            raise ConfigError(f"image_size must be an int or (H, W), got {size!r}")
        height, width = as_pair(size)
        if height < 1 or width < 1:
            raise ConfigError(f"image_size must be positive, got {size!r}")
        r = self.downsample
        if height % r or width % r:
            fix_h, fix_w = -(-height // r) * r, -(-width // r) * r
            raise ConfigError(
                f"image_size {height}x{width} is not divisible by the space-to-depth factor "
                f"downsample={r}; pad the images to {fix_h}x{fix_w} (image_size=({fix_h}, "
                f"{fix_w})) or pick a downsample that divides both sides (downsample=1 always "
                f"does)")
        for name in ("dropout", "attn_dropout"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0.0 <= value < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {value!r}")
        if self.encoding not in ENCODINGS:
            raise ConfigError(f"encoding must be one of {', '.join(ENCODINGS)}, "
                              f"got {self.encoding!r}")
        if self.encoding == "none" and not self.content:
            raise ConfigError('encoding="none" needs content=True (no attention logits left)')
        if self.attn_dropout_mode is None:
            self.attn_dropout_mode = "probabilities" if self.content else "batch"
        if self.attn_dropout_mode not in DROPOUT_MODES:
            raise ConfigError(f"attn_dropout_mode must be one of {', '.join(DROPOUT_MODES)}, got "
                              f"{self.attn_dropout_mode!r}")
        if self.content and self.attn_dropout_mode != "probabilities":
            raise ConfigError(f"attn_dropout_mode={self.attn_dropout_mode!r} needs "
                              f"positional-only attention; with content=True use "
                              f"attn_dropout_mode='probabilities'")
        if self.attn_dropout_mode == "factors" and self.encoding not in ("quadratic", "learned"):
            raise ConfigError(f"attn_dropout_mode='factors' needs a separable encoding "
                              f"('quadratic' or 'learned'), got encoding={self.encoding!r}; use "
                              f"'batch' or 'probabilities'")
        if self.content and self.encoding == "learned" and self.attention_qk_dim % 2:
            raise ConfigError(f"learned encoding with content splits each query into a row and "
                              f"a column half; qk_dim must be even, got {self.attention_qk_dim}")

    def layer_heads(self, index: int) -> int:
        """Number of heads of layer ``index``."""
        return self.heads[index] if isinstance(self.heads, list) else self.heads

    @property
    def grid_size(self) -> tuple[int, int]:
        """Token grid ``(H / r, W / r)`` of a training image."""
        height, width = as_pair(self.image_size)
        return height // self.downsample, width // self.downsample

    @property
    def attention_qk_dim(self) -> int:
        """Query/key width per head of the content attention."""
        return self.qk_dim or self.hidden_size


class TransformerLayer(nn.Module):
    """One post-LayerNorm BERT layer on channels-last tokens ``(B, H, W, D)`` (PAPER section 3).

    ``x = LN(x + Dropout(Dense(MHSA(x))))`` then ``x = LN(x + Dropout(W2 GELU(W1 x)))``. The MHSA
    has ``heads`` heads of full width (identity values, ``D_h = D``, as Theorem 1 wants) and its
    own output projection ``W_out: heads * D -> D``; ``Dense`` is BERT's extra ``D -> D``.
    """

    def __init__(self, config: SANetConfig, heads: int) -> None:
        super().__init__()
        d = config.hidden_size
        self.attn = SelfAttention2d(
            d, heads, encoding=config.encoding, content=config.content,
            attn_dropout=config.attn_dropout, attn_dropout_mode=config.attn_dropout_mode,
            qk_dim=config.attention_qk_dim,
            max_size=config.grid_size, pos_dim=config.pos_dim or d)
        self.attn_dense = nn.Linear(d, d)
        self.attn_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.fc1 = nn.Linear(d, config.ffn_size)
        self.fc2 = nn.Linear(config.ffn_size, d)
        self.ffn_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, H, W, D)`` to ``(B, H, W, D)``."""
        x = self.attn_norm(x + self.dropout(self.attn_dense(self.attn(x))))  # (B, H, W, D)
        x = self.ffn_norm(x + self.dropout(self.fc2(F.gelu(self.fc1(x)))))  # (B, H, W, D)
        return x


class SANet(ImageClassifier):
    """The paper's self-attention classifier (PAPER section 3), sized by :class:`SANetConfig`.

    :meth:`forward_features` returns the last layer's tokens ``(B, H / r, W / r, hidden_size)``
    (channels-last); :meth:`forward_head` averages them and classifies.
    """

    def __init__(self, config: SANetConfig) -> None:
        super().__init__()
        self.config = config
        self.in_chans, self.num_classes = config.in_chans, config.num_classes
        r = config.downsample
        self.space_to_depth = SpaceToDepth(r)
        self.embed = nn.Linear(config.in_chans * r * r, config.hidden_size)
        self.layers = nn.ModuleList(TransformerLayer(config, config.layer_heads(i))
                                    for i in range(config.num_layers))
        self.head = nn.Linear(config.hidden_size, config.num_classes)

    def check_input(self, x: Tensor) -> tuple[int, int]:
        """Validate images ``(B, C, H, W)``; return the token grid ``(H / r, W / r)``.

        Raises :class:`ShapeError` (a ``ValueError``) naming the expected shape and the fix.
        """
        _, _, h, w = self.check_images(x)
        r = self.config.downsample
        if h % r or w % r:
            raise ShapeError(
                f"SANet splits images into {r}x{r} blocks (downsample={r}); got {h}x{w} "
                f"images: crop or pad them to {h - h % r}x{w - w % r} or "
                f"{-(-h // r) * r}x{-(-w // r) * r}, or create the model with downsample=1")
        try:
            self.layers[0].attn.check_size(h // r, w // r)
        except ValueError as err:
            max_h, max_w = self.config.grid_size
            raise ShapeError(
                f"{err}. This model was created with image_size={self.config.image_size} "
                f"(token grid max_size={max_h}x{max_w}); create it with image_size=({h}, {w}) "
                f"or larger to take {h}x{w} images") from err
        return h // r, w // r

    def forward_features(self, x: Tensor) -> Tensor:
        """Images ``(B, C, H, W)`` to the last layer's tokens ``(B, H / r, W / r, D)``."""
        self.check_input(x)
        x = self.space_to_depth(x)  # (B, H/r, W/r, C r r)
        x = self.embed(x)  # (B, H/r, W/r, D)
        for layer in self.layers:
            x = layer(x)  # (B, H/r, W/r, D)
        return x

    def forward_head(self, features: Tensor) -> Tensor:
        """Mean over all tokens, then the classifier: ``(B, h, w, D)`` to ``(B, classes)``."""
        return self.head(features.mean(dim=(1, 2)))  # (B, num_classes)


# The positional-only models (sa-quadratic*, sa-learned) default to attn_dropout_mode="batch",
# the content model to "probabilities" (SANetConfig.attn_dropout_mode=None): the authors' code.
def _sa_net(name: str, defaults: dict[str, Any], kwargs: dict[str, Any]) -> SANet:
    return SANet(make_config(SANetConfig, name, defaults, kwargs))


@register_model
def sa_quadratic(**kwargs: Any) -> SANet:
    """SA quadratic emb. (Table 1): isotropic Gaussian heads, positional only (Lemma 2)."""
    return _sa_net("sa-quadratic", {"encoding": "quadratic"}, kwargs)


@register_model
def sa_quadratic_full(**kwargs: Any) -> SANet:
    """Non-isotropic Gaussian heads ``Sigma^-1 = S S^T`` (PAPER section 5 figures)."""
    return _sa_net("sa-quadratic-full", {"encoding": "quadratic-full"}, kwargs)


@register_model
def sa_quadratic_16heads(**kwargs: Any) -> SANet:
    """Isotropic Gaussian heads, 16 per layer (the 16-head ablation)."""
    return _sa_net("sa-quadratic-16heads", {"encoding": "quadratic", "heads": 16}, kwargs)


@register_model
def sa_learned(**kwargs: Any) -> SANet:
    """SA learned emb. (Table 1): learned relative row/column tables, positional only."""
    return _sa_net("sa-learned", {"encoding": "learned"}, kwargs)


@register_model
def sa_learned_content(**kwargs: Any) -> SANet:
    """SA learned emb. + content-based att. (Table 1), as in Ramachandran et al. 2019."""
    return _sa_net("sa-learned-content", {"encoding": "learned", "content": True}, kwargs)
