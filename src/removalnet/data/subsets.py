"""Class-balanced subsets and disjoint splits of a dataset.

The attacker's substitute data (S_LTD: a class-balanced fraction of D_train) and the verifier's data must
never overlap: :func:`disjoint_split` makes parts that are disjoint by construction and
:func:`assert_disjoint` checks any collection of subsets before use.
"""
from __future__ import annotations

import numbers
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset, Subset, TensorDataset

from ..utils import RemovalNetError

__all__ = ["dataset_labels", "balanced_subset", "disjoint_split", "assert_disjoint"]


def dataset_labels(ds: Dataset) -> np.ndarray:
    """All labels of ``ds`` as an int64 array, without reading images where the dataset knows them.

    Fast paths: ``.targets`` (the datasets of this package, torchvision's), ``TensorDataset`` (second tensor),
    ``Subset`` and ``ConcatDataset`` of those. Otherwise every sample is read once.
    """
    if isinstance(ds, Subset):
        return dataset_labels(ds.dataset)[np.asarray(ds.indices, dtype=np.int64)]
    if isinstance(ds, ConcatDataset):
        return np.concatenate([dataset_labels(d) for d in ds.datasets]).astype(np.int64)
    targets = getattr(ds, "targets", None)
    if targets is None and isinstance(ds, TensorDataset) and len(ds.tensors) >= 2:
        targets = ds.tensors[1]
    if targets is not None:
        arr = targets.detach().cpu().numpy() if isinstance(targets, torch.Tensor) else np.asarray(targets)
        if arr.ndim == 1 and len(arr) == len(ds) and np.issubdtype(arr.dtype, np.integer):
            return arr.astype(np.int64)
    return np.array([int(ds[i][1]) for i in range(len(ds))], dtype=np.int64)


def _is_int(v: Any) -> bool:
    return isinstance(v, (numbers.Integral, np.integer)) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, (numbers.Real, np.floating)) and not isinstance(v, bool) and not _is_int(v)


def _exclude_mask(exclude: Any, ds: Dataset, n: int) -> np.ndarray:
    available = np.ones(n, dtype=bool)
    if exclude is None:
        return available
    items = [exclude] if isinstance(exclude, Subset) else exclude
    if isinstance(items, (list, tuple)) and items and all(isinstance(s, Subset) for s in items):
        for s in items:
            if s.dataset is not ds:
                raise RemovalNetError("exclude: a Subset over a different dataset; pass indices into this one")
            available[np.asarray(s.indices, dtype=np.int64)] = False
        return available
    idx = np.asarray(list(items) if not isinstance(items, (np.ndarray, torch.Tensor)) else items)
    if idx.size == 0:
        return available
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer) or idx.min() < 0 or idx.max() >= n:
        raise RemovalNetError(f"exclude must be indices in 0..{n - 1} or Subsets of the dataset")
    available[idx.astype(np.int64)] = False
    return available


def _balanced_pick(labels: np.ndarray, available: np.ndarray, total: int, rng: np.random.Generator) -> np.ndarray:
    """Pick ``total`` available indices spread as evenly as possible over all classes of ``labels``.

    Every class gets ``total // K`` samples; the ``total % K`` remaining ones go to classes drawn at random
    among those with samples to spare.
    """
    classes = np.unique(labels)
    k = len(classes)
    pools = [np.flatnonzero((labels == c) & available) for c in classes]
    caps = np.array([len(p) for p in pools])
    base, extra = divmod(total, k)
    short = np.flatnonzero(caps < base)
    if short.size:
        c = short[0]
        raise RemovalNetError(f"class {classes[c]} has only {caps[c]} samples available; {base} per class needed "
                              f"for {total} samples over {k} classes")
    spare = np.flatnonzero(caps > base)
    if spare.size < extra:
        raise RemovalNetError(f"not enough samples for {total} balanced over {k} classes "
                              f"(available per class: {caps.tolist()})")
    quota = np.full(k, base)
    if extra:
        quota[rng.choice(spare, size=extra, replace=False)] += 1
    picked = [rng.permutation(pool)[:q] for pool, q in zip(pools, quota)]
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def balanced_subset(ds: Dataset, fraction: float | None = None, count: int | None = None, seed: int = 0,
                    exclude: Any = None) -> Subset:
    """A class-balanced random subset (the paper's S_LTD substitute data: e.g. 10% of D_train, balanced).

    Exactly one of ``fraction`` (of ``len(ds)``, in (0, 1]) or ``count`` (total samples). The total is split
    as evenly as possible across the classes; a class with too few samples raises RemovalNetError.
    ``exclude``: indices (or Subsets of ``ds``) never to pick. Seeded: same seed, same indices (sorted).
    """
    labels = dataset_labels(ds)
    n = len(labels)
    if (fraction is None) == (count is None):
        raise RemovalNetError("give exactly one of fraction or count")
    if fraction is not None:
        if not (_is_real(fraction) or _is_int(fraction)) or not 0.0 < float(fraction) <= 1.0:
            raise RemovalNetError(f"fraction must be a number in (0, 1], got {fraction!r}")
        total = int(np.floor(float(fraction) * n + 0.5))
        if total < 1:
            raise RemovalNetError(f"fraction {fraction} of {n} samples selects nothing")
    else:
        if not _is_int(count) or not 1 <= count <= n:
            raise RemovalNetError(f"count must be an integer in 1..{n}, got {count!r}")
        total = int(count)
    if not _is_int(seed) or seed < 0:
        raise RemovalNetError(f"seed must be a non-negative integer, got {seed!r}")
    available = _exclude_mask(exclude, ds, n)
    picked = _balanced_pick(labels, available, total, np.random.default_rng(int(seed)))
    return Subset(ds, picked.tolist())


def disjoint_split(ds: Dataset, sizes: Sequence[float] | Sequence[int], seed: int = 0) -> list[Subset]:
    """Split ``ds`` into pairwise disjoint, class-stratified parts (e.g. attacker data vs. verifier data).

    ``sizes``: all fractions (floats in (0, 1], summing to at most 1) or all counts (ints, summing to at most
    ``len(ds)``). Fractions are stratified: each class is permuted once and cut at the cumulative fractions
    (per-class rounding), so each part keeps the class proportions. Counts are class-balanced: each part is
    spread evenly over the classes, drawn from what earlier parts left. Parts come from one permutation /
    one pool, hence disjoint by construction; ``part.indices`` are sorted indices into ``ds``.
    """
    if not isinstance(sizes, (list, tuple)) or not sizes:
        raise RemovalNetError(f"sizes must be a non-empty list of fractions or counts, got {sizes!r}")
    if not _is_int(seed) or seed < 0:
        raise RemovalNetError(f"seed must be a non-negative integer, got {seed!r}")
    labels = dataset_labels(ds)
    n = len(labels)
    rng = np.random.default_rng(int(seed))
    parts: list[np.ndarray]
    if all(_is_int(s) for s in sizes):
        if any(s < 1 for s in sizes) or sum(sizes) > n:
            raise RemovalNetError(f"sizes as counts must be >= 1 and sum to at most {n}, got {list(sizes)}")
        available = np.ones(n, dtype=bool)
        parts = []
        for s in sizes:
            p = _balanced_pick(labels, available, int(s), rng)
            available[p] = False
            parts.append(p)
    elif all(_is_real(s) for s in sizes):
        fr = np.asarray(sizes, dtype=np.float64)
        if (fr <= 0).any() or (fr > 1).any() or fr.sum() > 1 + 1e-9:
            raise RemovalNetError(f"sizes as fractions must be in (0, 1] and sum to at most 1, got {list(sizes)}")
        cum = np.concatenate([[0.0], np.cumsum(fr)])
        chunks: list[list[np.ndarray]] = [[] for _ in sizes]
        for c in np.unique(labels):
            perm = rng.permutation(np.flatnonzero(labels == c))
            bounds = np.minimum(np.floor(cum * len(perm) + 0.5).astype(np.int64), len(perm))
            for i in range(len(sizes)):
                chunks[i].append(perm[bounds[i]:bounds[i + 1]])
        parts = [np.sort(np.concatenate(ch)) for ch in chunks]
        for i, p in enumerate(parts):
            if p.size == 0:
                raise RemovalNetError(f"part {i} (fraction {sizes[i]}) of {n} samples is empty")
    else:
        raise RemovalNetError(f"sizes must be all fractions (floats) or all counts (ints), got {list(sizes)}")
    return [Subset(ds, p.tolist()) for p in parts]


def _resolve(ds: Dataset) -> tuple[Dataset, np.ndarray]:
    """The innermost dataset under nested Subsets and the indices into it."""
    if isinstance(ds, Subset):
        base, idx = _resolve(ds.dataset)
        return base, idx[np.asarray(ds.indices, dtype=np.int64)]
    return ds, np.arange(len(ds), dtype=np.int64)


def _flatten(items: Iterable[Any]) -> list[Dataset]:
    out: list[Dataset] = []
    for it in items:
        if isinstance(it, (list, tuple)):
            out.extend(_flatten(it))
        else:
            out.append(it)
    return out


def assert_disjoint(*subsets: Dataset) -> None:
    """Raise RemovalNetError if two of ``subsets`` over the same data share a sample.

    Subsets (nested or not) are compared on indices into their innermost dataset. Datasets loaded with
    :func:`load_dataset` count as the same data when name and split agree (their ``data_key``), even if
    loaded twice or with other channels/sizes; other datasets are compared by identity.
    """
    resolved = []
    for s in _flatten(subsets):
        base, idx = _resolve(s)
        key = getattr(base, "data_key", None) or id(base)
        resolved.append((key, idx))
    for i in range(len(resolved)):
        for j in range(i + 1, len(resolved)):
            if resolved[i][0] != resolved[j][0]:
                continue
            shared = np.intersect1d(resolved[i][1], resolved[j][1])
            if shared.size:
                name = resolved[i][0] if isinstance(resolved[i][0], str) else "the same dataset"
                raise RemovalNetError(f"subsets {i} and {j} of {name} share {shared.size} samples "
                                      f"(indices {shared[:5].tolist()}{'...' if shared.size > 5 else ''})")
