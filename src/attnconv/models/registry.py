"""A registry of named models, in the style of timm.

``@register_model`` records a factory under its function name with ``_`` written as ``-``
(``sa_quadratic`` -> ``"sa-quadratic"``); :func:`create_model` builds a model by name with
optional overrides of its config; :func:`list_models` lists the names.

    model = create_model("sa-quadratic")                       # the paper's CIFAR-10 model
    tiny = create_model("sa-learned", in_chans=1, image_size=28, hidden_size=32, num_layers=2)
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, overload

from attnconv.errors import ConfigError
from attnconv.models.base import ImageClassifier
from attnconv.suggest import did_you_mean  # re-exported: callers import it from here too

ModelFactory = Callable[..., ImageClassifier]
F = TypeVar("F", bound=ModelFactory)
C = TypeVar("C")

_MODELS: dict[str, ModelFactory] = {}


@overload
def register_model(fn: F, /) -> F: ...


@overload
def register_model(*, name: str | None = None) -> Callable[[F], F]: ...


def register_model(fn: F | None = None, /, *, name: str | None = None) -> F | Callable[[F], F]:
    """Register a model factory ``fn(**kwargs) -> ImageClassifier``.

    Use as ``@register_model`` (name from the function, ``_`` -> ``-``) or
    ``@register_model(name="...")``. A duplicate name raises ``ValueError``.
    """

    def add(factory: F) -> F:
        key = name or factory.__name__.replace("_", "-")
        if key in _MODELS:
            raise ValueError(f"a model named {key!r} is already registered")
        _MODELS[key] = factory
        return factory

    return add(fn) if fn is not None else add


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, sorted; ``pattern`` filters with shell wildcards (``"sa-*"``)."""
    names = sorted(_MODELS)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def create_model(
    name: str,
    *,
    num_classes: int = 10,
    in_chans: int = 3,
    image_size: int | tuple[int, int] = 32,
    **overrides: Any,
) -> ImageClassifier:
    """Build the model registered as ``name``.

    Args:
        name: a name from :func:`list_models`.
        num_classes: classifier outputs.
        in_chans: channels of the input images.
        image_size: ``H`` (square) or ``(H, W)`` of the training images; sizes the learned
            positional tables (smaller inputs work too).
        **overrides: fields of the model's config (e.g. ``hidden_size``, ``num_layers``,
            ``heads``, ``attn_dropout_mode`` for the self-attention models -- ``"batch"``, one
            attention-dropout mask per batch, is the default of the positional-only ones,
            ``"probabilities"`` draws one per image; ``base_width`` for ResNet).

    Raises:
        ConfigError: unknown name or override, or an invalid value; the message suggests the
            closest valid name.
    """
    if name not in _MODELS:
        raise ConfigError(f"unknown model {name!r}{did_you_mean(name, _MODELS)}; known models: "
                          f"{', '.join(list_models())}")
    model = _MODELS[name](num_classes=num_classes, in_chans=in_chans, image_size=image_size,
                          **overrides)
    model.model_name = name  # the registry name, for checkpoints and reports
    return model


def make_config(config_cls: type[C], model: str, defaults: Mapping[str, Any],
                overrides: Mapping[str, Any]) -> C:
    """Build the dataclass ``config_cls`` from a model's defaults and the caller's overrides.

    Unknown keys raise :class:`ConfigError` naming the model, a suggestion and the valid keys.
    """
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"{config_cls!r} is not a dataclass")
    known = [f.name for f in dataclasses.fields(config_cls)]
    for key in overrides:
        if key not in known:
            raise ConfigError(f"{model} has no option {key!r}{did_you_mean(key, known)}; its "
                              f"options are: {', '.join(known)}")
    return config_cls(**{**defaults, **overrides})
