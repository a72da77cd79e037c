"""Checks made before any job of a spec runs (and by ``--dry-run``): the data's files must be where the spec
says (one message naming the expected place; a dry run warns instead, so that a grid can be planned away from
its data), the sizes the spec asks of its data (``verifier_count``, every attack's substitute set,
``eval_count``) must be servable by the data, class-balanced as the jobs draw them, a user's own model must
build (its factory is called once) and a given victim's weights must load into its model, whose accuracy on the
test split is then said first (:func:`~removalnet.guards.check_accuracy`: near chance or a permuted class order
warns before the grid spends its time). Each failure is one line naming the spec key
(``spec: verifier_count: 1000 samples ...``)."""
from __future__ import annotations

from typing import Any

from ..data import DataMissingError, balanced_subset, get_dataset_info
from ..guards import check_accuracy
from ..models import is_model_ref
from ..utils import RemovalNetError
from .artifacts import dataset, substitute_count, substitute_source, training_split
from .jobs import user_model
from .spec import ExperimentSpec

__all__ = ["check_spec_data"]


def _balanced(ds, count: int, what: str, key: str) -> None:
    try:
        balanced_subset(ds, count=min(count, len(ds)) if key == "verifier_count" else count, seed=0)
    except RemovalNetError as e:
        raise RemovalNetError(f"spec: {key}: {count} samples of {what} ({len(ds)} samples) cannot be drawn "
                              f"class-balanced: {e}") from None


def _loads(spec: ExperimentSpec, info, weights: str | None, key: str) -> Any:
    """``weights`` load into the victim's model (as the train job will load them; None: the model builds);
    returns the model."""
    v = spec.victim
    cfg = {"arch": v.arch, "kwargs": {"split_after": v.split_after} if v.split_after else {},
           "normalize": v.normalize, "weights": weights}
    try:
        return user_model(cfg, info, weights)
    except RemovalNetError as e:
        raise RemovalNetError(f"spec: {key}: {e}") from None


def _missing(key: str, e: DataMissingError, dry_run: bool) -> list[str]:
    """Data not present here: an error naming ``key``, or on a dry run the note that the run would stop there."""
    if not dry_run:
        raise RemovalNetError(f"spec: {key}: {e}") from None
    return [f"spec: {key}: {e} (the run will stop here until the data is in place)"]


def check_spec_data(spec: ExperimentSpec, *, dry_run: bool = False) -> list[str]:
    """Raise :class:`RemovalNetError` naming the key of missing data, of the first size the data cannot serve,
    of a user's model that does not build, or of a victim / given model whose weights do not load. With
    ``dry_run`` missing data is returned as a note instead (the other checks need the data)."""
    data: dict[str, Any] = {"dataset": spec.dataset, "data_root": spec.data_root, "lsd_holdout": spec.lsd_holdout}
    try:
        full = dataset(spec.dataset, "train", spec.data_root)
        test = dataset(spec.dataset, "test", spec.data_root)
    except DataMissingError as e:
        return _missing("dataset", e, dry_run)
    if spec.verifier_count:
        _balanced(test, spec.verifier_count, "the test split", "verifier_count")
    train, holdout = training_split(data)
    for i, a in enumerate(spec.attacks):
        key = f"attacks[{i}]" + (".count" if a.count is not None else ".fraction")
        cfg = {**data, "scenario": a.scenario, "source": a.source, "fraction": a.fraction, "count": a.count}
        try:
            source = substitute_source(cfg, holdout)
        except DataMissingError as e:
            return _missing(f"attacks[{i}].source", e, dry_run)
        n = substitute_count(cfg, len(full), holdout)
        base = source if source is not None else train
        name = "the S_LSD partition" if a.source == "partition" else (a.source if source is not None
                                                                      else "the training split")
        if n > len(base):
            raise RemovalNetError(f"spec: {key}: the substitute set needs {n} samples but {name} holds {len(base)}"
                                  + (" (a fraction is of the victim's training set)" if a.fraction else ""))
        if a.scenario == "ltd" or a.source != "partition":
            _balanced(base, n, name, key)
        if a.eval_count:
            _balanced(test, a.eval_count, "the test split", f"attacks[{i}].eval_count")
    info = get_dataset_info(spec.dataset)
    v = spec.victim
    if is_model_ref(v.arch) and v.weights != "pretrained":   # the user's factory runs here, not first in a job
        _loads(spec, info, None, "victim.model")
    if v.weights is not None and v.weights != "pretrained":
        victim = _loads(spec, info, v.weights, "victim.weights")
        if not dry_run:
            check_accuracy(victim, test, f"the victim ({v.weights})")
    for gname, g in (("references", spec.references), ("negatives", spec.negatives)):
        for i, c in enumerate(g.checkpoints or []):
            _loads(spec, info, c, f"{gname}.checkpoints[{i}]")
    return []
