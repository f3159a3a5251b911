"""Models assembled from :mod:`attnconv.layers`, built by name from a registry.

    from attnconv.models import create_model, list_models
    model = create_model("sa-quadratic")  # the paper's CIFAR-10 network, 12,086,844 parameters

Registered: ``sa-quadratic``, ``sa-quadratic-full``, ``sa-quadratic-16heads``, ``sa-learned``,
``sa-learned-content`` (the self-attention network of PAPER section 3) and ``resnet18`` (the
CIFAR baseline).
"""

from attnconv.models.base import ImageClassifier
from attnconv.models.registry import create_model, list_models, register_model
from attnconv.models.resnet import BasicBlock, ResNet, ResNetConfig
from attnconv.models.sa_net import SANet, SANetConfig, TransformerLayer
from attnconv.models.space_to_depth import SpaceToDepth

__all__ = [
    "BasicBlock",
    "ImageClassifier",
    "ResNet",
    "ResNetConfig",
    "SANet",
    "SANetConfig",
    "SpaceToDepth",
    "TransformerLayer",
    "create_model",
    "list_models",
    "register_model",
]
