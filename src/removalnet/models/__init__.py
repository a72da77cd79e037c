"""Architectures with the layer split of the paper. Importing this package registers every model."""
from .registry import check_model_kwargs, list_models, model_info, register_model
from .split import NotSplittableError, Normalize, SplitModel, split_module
from . import small  # noqa: F401  (registers vgg_small, resnet_small)
from . import paper  # noqa: F401  (registers the paper's torchvision architectures)
from .paper import from_torchvision, torchvision_model
from .refs import auto_split, create_model, describe_split, is_model_ref, resolve_model

__all__ = ["create_model", "check_model_kwargs", "list_models", "model_info", "register_model", "SplitModel",
           "Normalize", "split_module", "from_torchvision", "torchvision_model", "resolve_model", "auto_split",
           "describe_split", "is_model_ref", "NotSplittableError"]
