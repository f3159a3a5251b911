"""The interface every attnconv model implements (timm-style).

A model takes channels-first images ``(B, C, H, W)`` and returns logits ``(B, num_classes)``:
``forward(x) = forward_head(forward_features(x))``. Analysis code finds the attention layers
with :meth:`ImageClassifier.attention_layers` (or ``model.modules()``) and the optimizer asks
:meth:`ImageClassifier.no_weight_decay` which parameters to leave undecayed.
"""

from __future__ import annotations

from torch import Tensor, nn

from attnconv.errors import ShapeError
from attnconv.layers import SelfAttention2d


class ImageClassifier(nn.Module):
    """Base class of the registry's models.

    Subclasses set ``in_chans`` and ``num_classes`` and implement :meth:`forward_features` and
    :meth:`forward_head`.
    """

    in_chans: int
    num_classes: int
    model_name: str = ""  # set by create_model to the registry name

    def forward_features(self, x: Tensor) -> Tensor:
        """Images ``(B, C, H, W)`` to the last layer's features (layout set by the model)."""
        raise NotImplementedError

    def forward_head(self, features: Tensor) -> Tensor:
        """Features from :meth:`forward_features` to logits ``(B, num_classes)``."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """Images ``(B, C, H, W)`` to logits ``(B, num_classes)``."""
        return self.forward_head(self.forward_features(x))

    def attention_layers(self) -> list[SelfAttention2d]:
        """The model's :class:`SelfAttention2d` layers, input to output (empty for a CNN)."""
        return [m for m in self.modules() if isinstance(m, SelfAttention2d)]

    def no_weight_decay(self) -> set[str]:
        """Full names of the parameters that must never be weight-decayed.

        These are the Gaussian centres, widths and ``S`` matrices of the quadratic encodings
        (PAPER section 3: no weight decay on the Gaussian parameters). Whether biases and norm
        weights are decayed is the optimizer's choice, not listed here.
        """
        names: set[str] = set()
        for prefix, module in self.named_modules():
            if isinstance(module, SelfAttention2d):
                names |= {f"{prefix}.{name}" if prefix else name
                          for name in module.no_weight_decay()}
        return names

    def check_images(self, x: Tensor) -> tuple[int, int, int, int]:
        """Validate channels-first images and return ``(B, C, H, W)``.

        Raises :class:`ShapeError` for a non-4D tensor or the wrong number of channels.
        """
        name = type(self).__name__
        expected = f"(B, {self.in_chans}, H, W)"
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} expects a torch.Tensor of images {expected}, "
                            f"got {type(x).__name__}")
        if x.dim() != 4:
            hint = (" (a single image: add the batch axis with x.unsqueeze(0))"
                    if x.dim() == 3 else "")
            raise ShapeError(f"{name} expects channels-first images {expected}; got a "
                             f"{x.dim()}D tensor of shape {tuple(x.shape)}{hint}")
        b, c, h, w = x.shape
        if c != self.in_chans:
            if x.shape[-1] == self.in_chans:
                hint = "; it looks channels-last: pass x.permute(0, 3, 1, 2)"
            else:
                hint = f"; create the model with in_chans={c} for {c}-channel images"
            raise ShapeError(f"{name} expects images {expected} with {self.in_chans} channels in "
                             f"axis 1; got shape {tuple(x.shape)}{hint}")
        if h < 1 or w < 1:
            raise ShapeError(f"{name} got empty images of shape {tuple(x.shape)}")
        return b, c, h, w
