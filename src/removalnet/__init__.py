"""removalnet: DNN fingerprint removal attacks and the ownership verifiers they are measured against.

``import removalnet`` stays light (the command line starts from it): the names that need torch are imported on
first use, and the studies are imported by the experiment runner when it first looks up a hook
(``removalnet.experiment.hooks``).
"""
__version__ = "0.1.0"

from .utils import RemovalNetError, seed_everything, weights_hash  # noqa: E402

__all__ = ["__version__", "SplitModel", "create_model", "list_models", "split_module", "RemovalNetError",
           "seed_everything", "weights_hash"]

_FROM_MODELS = ("SplitModel", "create_model", "list_models", "split_module")


def __getattr__(name: str):
    """``removalnet.SplitModel`` etc.: imported from ``removalnet.models`` (and torch) when first asked for."""
    if name in _FROM_MODELS:
        from . import models  # lazy: keeps torch off the CLI's start
        return getattr(models, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
