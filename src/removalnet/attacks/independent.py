"""Independently trained models: the negative and reference models of the paper (section 4.1.2, 4.1.4).

Negative models share the victim's architecture and training data but start from a different random
initialisation, with "a slight noise" added to the training iterations and the learning rate for every
seed (paper, section 4.1.2). Reference models are trained the same way and set the verification threshold
tau (algorithms.md, "Negative and reference models"); they must use seeds disjoint from the negative
models reported in a table. The two roles differ ONLY in their seeds:

* reference models: seeds ``REFERENCE_SEED_BASE + i`` (1000, 1001, ...),
* negative models: seeds ``NEGATIVE_SEED_BASE + i`` (2000, 2001, ...),

with ``i < SEEDS_PER_ROLE`` (1000). :func:`independent_seeds` returns these lists. Victims are usually
trained with small seeds (0..999), so none of the three groups overlap.

:func:`build_from_config` and :func:`fresh_like` build an untrained model of the same architecture (also
used by KnockoffNets).
"""
from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any

import numpy as np
from torch import nn
from torch.utils.data import Dataset

from ..models import SplitModel, create_model
from ..train import TrainConfig, train_model
from ..utils import RemovalNetError, seed_everything, weights_hash

__all__ = ["train_independent", "independent_seeds", "build_from_config", "fresh_like",
           "REFERENCE_SEED_BASE", "NEGATIVE_SEED_BASE", "SEEDS_PER_ROLE"]

REFERENCE_SEED_BASE = 1000
NEGATIVE_SEED_BASE = 2000
SEEDS_PER_ROLE = 1000
_ROLES = {"reference": REFERENCE_SEED_BASE, "negative": NEGATIVE_SEED_BASE}
_CONFIG_KEYS = {"arch", "num_classes", "in_chans", "input_size", "mean", "std", "kwargs"}


def independent_seeds(role: str, count: int, start: int = 0) -> list[int]:
    """Seeds of ``count`` independently trained models of ``role`` ("reference" or "negative").

    Reference seeds are 1000+i and negative seeds 2000+i (i = start .. start+count-1, below 1000), so a
    reference model never shares a seed with a negative model.
    """
    if role not in _ROLES:
        raise RemovalNetError(f"role must be one of {sorted(_ROLES)}, got {role!r}")
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise RemovalNetError(f"count must be a non-negative integer, got {count!r}")
    if not isinstance(start, int) or isinstance(start, bool) or start < 0:
        raise RemovalNetError(f"start must be a non-negative integer, got {start!r}")
    if start + count > SEEDS_PER_ROLE:
        raise RemovalNetError(f"start + count must be <= {SEEDS_PER_ROLE} "
                              "(the seed ranges of the roles would overlap)")
    return [_ROLES[role] + i for i in range(start, start + count)]


def build_from_config(arch_config: dict[str, Any]) -> SplitModel:
    """An untrained model from a ``model.build_config``-style dict.

    Keys: ``arch`` (registry name, required), ``num_classes``, ``in_chans``, ``input_size``, ``kwargs``
    (architecture keyword arguments) and optionally ``mean``/``std`` (input normalisation).
    """
    if not isinstance(arch_config, dict):
        raise RemovalNetError(f"arch_config must be a dict with an 'arch' key, got {type(arch_config).__name__}")
    unknown = sorted(set(arch_config) - _CONFIG_KEYS)
    if unknown:
        raise RemovalNetError(f"arch_config has unknown key(s) {unknown}; known: {sorted(_CONFIG_KEYS)}")
    if "arch" not in arch_config:
        raise RemovalNetError("arch_config needs an 'arch' key (a registered model name)")
    kwargs = arch_config.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        raise RemovalNetError(f"arch_config['kwargs'] must be a dict, got {type(kwargs).__name__}")
    model = create_model(arch_config["arch"], arch_config.get("num_classes", 10), arch_config.get("in_chans", 3),
                         arch_config.get("input_size", 32), mean=arch_config.get("mean"),
                         std=arch_config.get("std"), **kwargs)
    if "mean" in arch_config or "std" in arch_config:
        # build_config records the normalisation too, so the model can be rebuilt from it alone
        model.build_config = dict(model.build_config, mean=arch_config.get("mean"), std=arch_config.get("std"))
    return model


def _reset_all(model: nn.Module) -> None:
    for m in model.modules():
        reset = getattr(m, "reset_parameters", None)
        if callable(reset):
            reset()
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats:
            m.reset_running_stats()


def fresh_like(model: SplitModel) -> SplitModel:
    """An untrained model of ``model``'s architecture, with ``model``'s input normalisation.

    Built with the registry from ``model.build_config`` when the model has one; otherwise a deep copy whose
    every module with a ``reset_parameters`` method is re-initialised (and BatchNorm statistics reset).
    Uses the global torch RNG: seed it first (the attacks do).
    """
    if not isinstance(model, SplitModel):
        raise RemovalNetError(f"expected a SplitModel, got {type(model).__name__}")
    cfg = getattr(model, "build_config", None)
    if cfg is not None:
        fresh = build_from_config(dict(cfg))
    else:
        fresh = copy.deepcopy(model)
        _reset_all(fresh)
    # the normalisation is fixed preprocessing, not learnt: keep the victim's
    fresh.normalize.load_state_dict(model.normalize.state_dict())
    fresh.default_layer = model.default_layer
    return fresh.to(next(model.parameters()).device)


def train_independent(arch_config: dict[str, Any] | SplitModel, train_set: Dataset,
                      test_set: Dataset | None = None, *, seed: int,
                      base_config: TrainConfig | None = None, jitter: float = 0.1,
                      device=None, progress: bool = False,
                      start: SplitModel | None = None) -> tuple[SplitModel, dict[str, Any]]:
    """Train one negative or reference model: fresh initialisation, jittered iterations and lr.

    ``start``: fine-tune this model (a pretrained start, trained in place) instead of a fresh initialisation.

    The iterations (``base_config.iterations``, or ``epochs x ceil(len(train_set) / batch_size)``) and the
    learning rate are each multiplied by a factor drawn from U[1 - jitter, 1 + jitter] with
    ``numpy.random.default_rng(seed)``; the initialisation and the batch order come from ``seed`` too, so
    a seed fixes the model. ``arch_config`` is a ``build_config`` dict (see :func:`build_from_config`) or a
    model whose architecture and normalisation are reused (never its weights).

    Returns ``(model, info)``; ``info`` holds the seed, the jittered ``lr`` and ``iterations`` with their
    factors and base values, the training config used, the trainer's history, ``test_accuracy`` and the
    ``weights_hash``.
    """
    base_config = base_config if base_config is not None else TrainConfig()
    if not isinstance(base_config, TrainConfig):
        raise RemovalNetError(f"base_config must be a TrainConfig, got {type(base_config).__name__}")
    if isinstance(jitter, bool) or not isinstance(jitter, (int, float)) or not 0 <= jitter < 1:
        raise RemovalNetError(f"jitter must be a number in [0, 1), got {jitter!r}")
    if len(train_set) == 0:
        raise RemovalNetError("train_set is empty")
    seed_everything(seed)  # validates the seed and fixes the initialisation below
    if start is not None:
        model = start
    else:
        model = fresh_like(arch_config) if isinstance(arch_config, SplitModel) else build_from_config(arch_config)
    rng = np.random.default_rng(seed)
    lr_factor, it_factor = (float(v) for v in rng.uniform(1.0 - jitter, 1.0 + jitter, size=2))
    base_iters = base_config.iterations or base_config.epochs * math.ceil(len(train_set) / base_config.batch_size)
    iterations = max(1, int(round(base_iters * it_factor)))
    config = dataclasses.replace(base_config, lr=base_config.lr * lr_factor, iterations=iterations)
    history = train_model(model, train_set, test_set, config, seed=seed, device=device, progress=progress)
    model.eval()
    info = {
        "seed": seed, "jitter": float(jitter),
        "lr": config.lr, "lr_factor": lr_factor, "base_lr": base_config.lr,
        "iterations": iterations, "iterations_factor": it_factor, "base_iterations": base_iters,
        "config": config.to_dict(), "history": history,
        "test_accuracy": history.get("final_test_accuracy"),
        "arch_config": dict(getattr(model, "build_config", {})),
        "weights_hash": weights_hash(model),
    }
    return model, info
