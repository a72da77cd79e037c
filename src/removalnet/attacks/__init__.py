"""Fingerprint removal attacks: RemovalNet (paper, section 3), the baselines it is compared with, and
removalnet-plus (composable components beyond the paper: channel permutation, boundary shifting, stopping).

Importing this package registers every attack: ``create_attack("removalnet", alpha=0.2)``,
``list_attacks()``. Substitute sets D_sub: :func:`build_substitute`.
"""
from __future__ import annotations

from ..registry import import_modules
from .base import (RETURNED_START, Attack, AttackContext, BatchStream, Param, attack_class, create_attack,
                   list_attacks, make_schedule, make_sgd, register_attack)
from .substitute import SubstituteSet, build_substitute
from .removalnet import RemovalNet, feature_shuffle, ilbs, reverse_latent

# The attack modules; each registers its attacks on import (a new attack: one file and one name here).
# An import error in any of them is raised.
MODULES = ("finetune", "prune", "distill", "knockoff", "independent", "removalnet_plus")
import_modules(__name__, MODULES)

__all__ = ["Attack", "AttackContext", "BatchStream", "Param", "attack_class", "create_attack", "list_attacks",
           "make_schedule", "make_sgd", "register_attack", "SubstituteSet", "build_substitute", "RemovalNet",
           "feature_shuffle", "ilbs", "reverse_latent", "RETURNED_START"]
