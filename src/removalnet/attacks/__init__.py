"""Fingerprint removal attacks: RemovalNet (paper, section 3), the baselines it is compared with, and
removalnet-plus (composable components beyond the paper: channel permutation, boundary shifting, stopping).

Importing this package registers every attack: ``create_attack("removalnet", alpha=0.2)``,
``list_attacks()``. Substitute sets D_sub: :func:`build_substitute`.
"""
from __future__ import annotations

import importlib

from .base import (Attack, AttackContext, BatchStream, Param, attack_class, create_attack, list_attacks,
                   make_schedule, make_sgd, register_attack)
from .substitute import SubstituteSet, build_substitute
from .removalnet import RemovalNet, feature_shuffle, ilbs, reverse_latent

# Baseline attack modules; each registers itself on import. A module that is not present in this
# installation is skipped (only that exact module: an import error inside a module is raised).
_OPTIONAL = ("finetune", "prune", "distill", "knockoff", "independent", "removalnet_plus")
for _mod in _OPTIONAL:
    try:
        importlib.import_module(f"{__name__}.{_mod}")
    except ModuleNotFoundError as _e:
        if _e.name != f"{__name__}.{_mod}":
            raise
del _mod

__all__ = ["Attack", "AttackContext", "BatchStream", "Param", "attack_class", "create_attack", "list_attacks",
           "make_schedule", "make_sgd", "register_attack", "SubstituteSet", "build_substitute", "RemovalNet",
           "feature_shuffle", "ilbs", "reverse_latent"]
