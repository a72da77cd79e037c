"""removalnet: DNN fingerprint removal attacks and the ownership verifiers they are measured against."""
__version__ = "0.1.0"

from .models import SplitModel, create_model, list_models, split_module  # noqa: E402
from .utils import RemovalNetError, seed_everything, weights_hash  # noqa: E402
# the studies plug their spec section and job kind into the experiment runner (they sit above it)
from . import studies  # noqa: E402,F401

__all__ = ["__version__", "SplitModel", "create_model", "list_models", "split_module", "RemovalNetError",
           "seed_everything", "weights_hash"]
