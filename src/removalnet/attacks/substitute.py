"""Substitute sets D_sub held by the attacker (paper, sections 3.1 and 4.1).

Two scenarios:

* ``"ltd"`` (S_LTD, limited training data): a class-balanced fraction or count of the victim's training set
  (paper: 10%; 2%..20% in the efficiency study).
* ``"lsd"`` (S_LSD, limited surrogate data): natural samples of the same task from another source. With
  ``source`` (a dataset name such as ``"cinic10"`` for CIFAR10, or a Dataset) a class-balanced fraction or
  count of that source; without it, a class-stratified random partition of ``dataset`` (natural class
  proportions, ``disjoint_split(pool, [k / len(pool)], seed)``; its size may differ from k by the per-class
  rounding), as the paper's GTSRB protocol (a disjoint 15% partition).

Selection follows the paper's two principles: diverse (balanced) classes and a similar distribution.
``exclude`` lists indices of the sampled base dataset (the training set, or ``source`` when given) that
belong to the verifier (its fingerprint set); they are removed before sampling and never used. Labels are
the victim's predictions (``labels="victim"``, the attacker's setting and the reference code's) or the
dataset's true labels (``labels="true"``).
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from ..data import balanced_subset, dataset_labels, disjoint_split, load_dataset
from ..models.split import SplitModel
from ..train import predict_logits
from ..utils import RemovalNetError

__all__ = ["SubstituteSet", "build_substitute"]


class SubstituteSet(Dataset):
    """``(x, y)`` pairs: images of ``base`` at ``indices`` with the chosen ``labels``.

    Attributes: ``indices`` (np.int64 array of positions in ``base``), ``labels`` (torch.long tensor),
    ``true_labels`` (np.int64), ``scenario`` ("ltd"/"lsd"), ``source`` (name of the sampled dataset),
    ``label_kind`` ("victim"/"true"), ``agreement`` (fraction of victim labels equal to the true labels, or
    None for true labels).
    """

    def __init__(self, base: Dataset, indices: Sequence[int], labels: torch.Tensor, *, scenario: str, source: str,
                 label_kind: str, true_labels: np.ndarray, agreement: float | None):
        self.base = base
        self.indices = np.asarray(indices, dtype=np.int64)
        self.labels = torch.as_tensor(labels, dtype=torch.long).cpu()
        if self.labels.shape != (len(self.indices),):
            raise ValueError("one label per index is required")
        self.true_labels = np.asarray(true_labels, dtype=np.int64)
        self.scenario = scenario
        self.source = source
        self.label_kind = label_kind
        self.agreement = agreement
        self.targets = self.labels.numpy()

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.base[int(self.indices[i])][0]
        return x, int(self.labels[i])

    def __getitems__(self, items: Sequence[int]) -> list[tuple[torch.Tensor, int]]:
        pos = [int(self.indices[i]) for i in items]
        getter = getattr(self.base, "__getitems__", None)
        samples = getter(pos) if getter is not None else [self.base[p] for p in pos]
        return [(s[0], int(self.labels[i])) for s, i in zip(samples, items)]

    def class_counts(self, num_classes: int | None = None) -> np.ndarray:
        return np.bincount(self.labels.numpy(), minlength=num_classes or 0)

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary for checkpoint metadata."""
        return {"scenario": self.scenario, "source": self.source, "size": len(self), "labels": self.label_kind,
                "victim_true_agreement": self.agreement}

    def __repr__(self) -> str:
        return f"SubstituteSet({self.scenario}, source={self.source}, n={len(self)}, labels={self.label_kind})"


def _size(n_base: int, fraction: float | None, count: int | None) -> int:
    if (fraction is None) == (count is None):
        raise RemovalNetError("give exactly one of fraction or count for the substitute set")
    if fraction is not None:
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
            raise RemovalNetError(f"fraction must be in (0, 1], got {fraction!r}")
        return max(1, int(round(fraction * n_base)))
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise RemovalNetError(f"count must be a positive integer, got {count!r}")
    return int(count)


def _input_size(victim: SplitModel) -> int | None:
    cfg = getattr(victim, "build_config", None) or {}
    return cfg.get("input_size")


def _load(name: str, victim: SplitModel) -> Dataset:
    return load_dataset(name, "train", in_chans=victim.in_chans, input_size=_input_size(victim))


def build_substitute(victim: SplitModel, dataset: Dataset | str, *, scenario: str = "ltd",
                     fraction: float | None = None, count: int | None = None, source: Dataset | str | None = None,
                     labels: str = "victim", exclude: Iterable[int] | None = None, seed: int = 0,
                     device: str | torch.device | None = None) -> SubstituteSet:
    """Build D_sub for ``victim`` (see the module docstring).

    ``dataset`` is the victim's training set (a Dataset or a registered name, loaded as the ``"train"``
    split with the victim's channels and input size). ``fraction`` is relative to the sampled base dataset
    (the training set, or ``source``), ``count`` is absolute; give exactly one. ``exclude`` holds indices of
    that base dataset. Deterministic given ``seed``.
    """
    if scenario not in ("ltd", "lsd"):
        raise RemovalNetError(f"scenario must be 'ltd' or 'lsd', got {scenario!r}")
    if labels not in ("victim", "true"):
        raise RemovalNetError(f"labels must be 'victim' or 'true', got {labels!r}")
    if scenario == "ltd" and source is not None:
        raise RemovalNetError("source is only used in the 'lsd' scenario (ltd samples the training set)")
    if isinstance(dataset, str):
        dataset = _load(dataset, victim)
    base_name = getattr(dataset, "data_key", None) or getattr(dataset, "name", None) or type(dataset).__name__
    if scenario == "lsd" and source is not None:
        if isinstance(source, str):
            base, base_name = _load(source, victim), source
        else:
            base = source
            base_name = getattr(source, "data_key", None) or getattr(source, "name", None) or type(source).__name__
    else:
        base = dataset
    n_base = len(base)  # type: ignore[arg-type]
    k = _size(n_base, fraction, count)

    excluded = np.unique(np.asarray(list(exclude) if exclude is not None else [], dtype=np.int64))
    if excluded.size and (excluded.min() < 0 or excluded.max() >= n_base):
        raise RemovalNetError(f"exclude holds indices outside 0..{n_base - 1} of the sampled dataset")
    keep = np.setdiff1d(np.arange(n_base, dtype=np.int64), excluded)
    if k > len(keep):
        raise RemovalNetError(f"the substitute set needs {k} samples but only {len(keep)} are available "
                              f"({n_base} minus {excluded.size} excluded)")
    if scenario == "lsd" and source is None:
        # a stratified random partition of what the verifier left: natural class proportions
        if k < len(keep):
            part = disjoint_split(Subset(base, keep.tolist()), [k / len(keep)], seed=seed)[0]
            indices = keep[np.asarray(part.indices, dtype=np.int64)]
        else:
            indices = keep
    else:
        indices = np.asarray(balanced_subset(base, count=k, seed=seed, exclude=excluded).indices, dtype=np.int64)

    subset = Subset(base, indices.tolist())
    true = np.asarray(dataset_labels(subset), dtype=np.int64)
    if labels == "victim":
        y = predict_logits(victim, subset, device=device).argmax(dim=1)
        agreement = float((y.numpy() == true).mean())
    else:
        y = torch.as_tensor(true, dtype=torch.long)
        agreement = None
    return SubstituteSet(base, indices, y, scenario=scenario, source=str(base_name), label_kind=labels,
                         true_labels=true, agreement=agreement)
