"""The smoke scale of a spec: every model, loader, attack, verifier, study and report of the spec runs for
real, at a size that proves the code path on a CPU in minutes (``removalnet run SPEC --smoke``, or
``smoke: true`` in the spec).

:func:`smoke_dict` is one pure function of the raw spec mapping: it keeps the datasets, architectures (and
their input sizes), attacks, scenarios, verifiers and study, and shrinks their sizes: one seed, two
reference and one negative model, a two-step training, two-iteration attacks with checkpoints at t = 0
and 2 (still saved and scored), verifiers and studies at minimal sizes. The run folder gets the suffix
``-smoke`` so a smoke run never mixes with a real one. timm's pretrained weights (a download) are replaced by
random initialisation, so a smoke run never needs a network. The job configs carry ``smoke: true`` (only then:
the ids of real runs do not change) and every job reads its data through :func:`smoke_subset`: the first
``per_class`` samples of each of the first 16 classes of each split (round robin, at most ``max_images``).
"""
from __future__ import annotations

import copy
from typing import Any

import numpy as np
from torch.utils.data import Dataset, Subset

from ..attacks import create_attack, list_attacks
from ..data import dataset_labels
from ..verify import create_verifier, list_verifiers
from .hooks import spec_section, spec_sections

__all__ = ["smoke_dict", "smoke_subset", "SMOKE_SUFFIX", "SMOKE_DATA", "SMOKE_TRAIN", "SMOKE_ATTACK",
           "SMOKE_VERIFIERS", "SMOKE_CLASSES",
           "smoke_attack_params", "two_ends"]

SMOKE_SUFFIX = "-smoke"
#: images per class and at most per split: 5 training images per class leave one per class to a 10-15%
#: S_LSD partition; ImageNet's 1000 classes are capped (a few hundred classes appear in the training split)
SMOKE_DATA = {"train": (5, 256), "test": (2, 48), "val": (2, 48)}
#: at most this many classes (the first ones) in every split: a victim trained two steps predicts the classes
#: it has seen, so some verifier images are classified correctly (DeepJudge seeds from those); with
#: ImageNet's 1000 classes spread over a few hundred images, none would be
SMOKE_CLASSES = 16
#: TrainConfig keys of the victim, reference and negative models (iterations override epochs)
SMOKE_TRAIN = {"iterations": 2, "batch_size": 8}
#: attack parameters (where the attack has them)
SMOKE_ATTACK = {"iterations": 2, "batch_size": 8, "checkpoint_every": 2, "latent_steps": 2, "eval_every": 1,
                "check_every": 1, "boundary_steps": 2}
#: each verifier's size parameters at their smallest useful values
SMOKE_VERIFIERS = {
    "deepjudge": {"num_seeds": 4, "max_iters": 4, "max_tests": 4, "pgd_steps": 2},
    "deepjudge_aligned": {"num_seeds": 4, "max_iters": 4, "max_tests": 4, "pgd_steps": 2},
    "deepjudge_scaled": {"num_seeds": 4, "max_iters": 4, "max_tests": 4, "pgd_steps": 2},
    "zest": {"num_images": 4, "num_masks": 8},
    "modeldiff": {"num_pairs": 4, "iterations": 20},
    "modeldiff_pgd": {"num_pairs": 4, "steps": 2},
    "ipguard": {"num_points": 4, "max_iter": 4},
    "sac": {"num_samples": 4},
}


def _known(params: dict[str, Any], defaults: dict[str, Any], small: dict[str, Any]) -> dict[str, Any]:
    """``params`` with the keys of ``small`` that ``defaults`` knows set to the smaller of both values."""
    out = dict(params)
    for k, v in small.items():
        if k in defaults:
            cur = out.get(k, defaults[k])
            out[k] = v if cur is None or not isinstance(cur, (int, float)) else min(cur, v)
    return out


def smoke_attack_params(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """An attack's parameters at the smoke scale (the sizes it has, shrunk)."""
    if name not in list_attacks() or not isinstance(params, dict):
        return params  # left for the spec's validation to name
    return _known(params, create_attack(name).params, SMOKE_ATTACK)


def two_ends(values: list | None) -> list | None:
    """The first and the last value (a sweep at its smallest that still draws a line)."""
    return values if not values or len(values) <= 2 else [values[0], values[-1]]


def smoke_dict(raw: dict[str, Any]) -> dict[str, Any]:
    """The smoke-scale version of a raw spec mapping (a new mapping; ``raw`` is not changed).

    Keeps what decides the code path (dataset, sources, architecture, input size, attacks and scenarios,
    verifiers, study, threshold rule, device) and shrinks every size; sets ``smoke: true`` and appends
    ``-smoke`` to the name (once).
    """
    s = copy.deepcopy(raw)
    s["smoke"] = True
    name = str(s.get("name", "spec"))
    s["name"] = name if name.endswith(SMOKE_SUFFIX) else name + SMOKE_SUFFIX
    seeds = s.get("seeds", 10)
    s["seeds"] = [seeds[0]] if isinstance(seeds, list) and seeds else 1
    victim = dict(s.get("victim") or {})
    # timm's pretrained weights are a download: at the smoke scale the victim and the fine-tuned reference and
    # negative models start from random weights instead (importing weights and fine-tuning from a start are
    # tested on local files: tests/test_byo_spec.py)
    if victim.get("weights") == "pretrained":
        victim.pop("weights")
    victim["train"] = {**(victim.get("train") or {}), **SMOKE_TRAIN}
    victim["train"]["batch_size"] = min(SMOKE_TRAIN["batch_size"], (raw.get("victim") or {}).get("train", {})
                                        .get("batch_size", SMOKE_TRAIN["batch_size"]))
    s["victim"] = victim
    for group, most in (("references", 2), ("negatives", 1)):
        g = dict(s.get(group) or {})
        g["count"] = min(g.get("count", 5 if group == "references" else 10), most)
        if str(g.get("init", "")).startswith("timm:"):
            g.pop("init")
        if isinstance(g.get("train"), dict):  # a group's own recipe: the same two steps as the victim's
            g["train"] = {**g["train"], **SMOKE_TRAIN}
        s[group] = g
    # a held-out S_LSD partition keeps at least one of the smoke scale's training images per class
    holdout = s.get("lsd_holdout")
    if isinstance(holdout, (int, float)) and not isinstance(holdout, bool) and 0 < holdout < 1:
        s["lsd_holdout"] = max(float(holdout), 1.0 / SMOKE_DATA["train"][0])
    s["attacks"] = [{**a, "params": smoke_attack_params(a["name"], a.get("params") or {})}
                    if isinstance(a, dict) and "name" in a else a for a in (s.get("attacks") or [])]
    verifiers = s.get("verifiers")
    if verifiers is None:
        verifiers = {v: {} for v in list_verifiers()}
    elif isinstance(verifiers, list):
        verifiers = {v: {} for v in verifiers}
    if isinstance(verifiers, dict):
        s["verifiers"] = {v: _known(p or {}, create_verifier(v).params, SMOKE_VERIFIERS.get(v, {}))
                          if v in list_verifiers() else p for v, p in verifiers.items()}
    if s.get("verifier_count"):
        s["verifier_count"] = min(s["verifier_count"], SMOKE_DATA["test"][1])
    for key in spec_sections():  # a higher layer's section (a study) shrinks itself
        section = spec_section(key)
        if section.smoke is not None and isinstance(s.get(key), dict):
            s[key] = section.smoke(s[key])
    return s


def smoke_subset(ds: Dataset, split: str) -> Subset:
    """The smoke-scale part of a split: samples of the first ``SMOKE_CLASSES`` classes taken round robin
    (first samples of each class first), ``SMOKE_DATA[split]`` = (per class, at most in all); indices sorted."""
    per_class, most = SMOKE_DATA.get(split, SMOKE_DATA["test"])
    labels = dataset_labels(ds)
    pools = [np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)[:SMOKE_CLASSES]]
    order = [p[r] for r in range(per_class) for p in pools if r < len(p)]
    return Subset(ds, sorted(int(i) for i in order[:most]))
