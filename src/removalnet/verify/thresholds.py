"""Decision thresholds tau from independently trained reference models (paper, section 4.1.4).

The paper follows ModelDiff: train several reference models like F_V but independently of it; tau is
the lowest distance (or the highest similarity) that any reference model reaches against the victim
(rule ``"minmax"``, the default). A suspect is judged a copy when its distance < tau (similarity > tau);
a value equal to tau is not a copy, so no reference model is ever judged a copy of the victim.

Two further rules, which tolerate one outlying reference and tell how far the references spread:

* ``"normal"``: fit a normal distribution to the reference values, tau = mean - k*std for distances
  and mean + k*std for similarities (sample std, ddof=1; ``k`` default 2.0, i.e. about 2.3% of
  independent models beyond tau if the values are normal). Needs at least 2 references.
* ``"percentile"``: tau = the ``q``-th percentile (distances) or the (100 - q)-th percentile
  (similarities) of the reference values (numpy's linear interpolation; ``q`` default 5.0), then moved by
  ``margin`` times the reference range towards "not a copy" (``margin`` default 0.0).

A rule and its parameters travel together as a :class:`ThresholdRule`, built once (from a spec's
``threshold_rule``, a name or ``{name: normal, k: 3}``, or from the command line) and stored with the results.

At least :data:`MIN_REFERENCES` (5) reference models are recommended; fewer give a warning.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

import numpy as np
import torch
from torch import nn

from ..utils import RemovalNetError
from .base import Fingerprint, Metric, Verifier, all_metrics

__all__ = ["RULES", "ThresholdRule", "MIN_REFERENCES", "calibrate", "verdict", "false_positive_rate", "calibrate_models",
           "Calibration", "resolve_metric", "score_model"]

RULES = ("minmax", "normal", "percentile")
MIN_REFERENCES = 5


#: the parameters each rule uses
RULE_PARAMS = {"minmax": (), "normal": ("k",), "percentile": ("q", "margin")}


@dataclass(frozen=True)
class ThresholdRule:
    """A threshold rule with its parameters: ``minmax`` (the paper), ``normal`` (``k``) or ``percentile``
    (``q``, ``margin``); validated at construction. ``ThresholdRule.parse`` builds one from a name, a mapping
    (``{"name": "normal", "k": 3}``) or a rule."""

    name: str = "minmax"
    k: float = 2.0
    q: float = 5.0
    margin: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in RULES:
            raise RemovalNetError(f"unknown threshold rule {self.name!r}; known: {', '.join(RULES)}")
        for key in ("k", "q", "margin"):
            v = getattr(self, key)
            positive = key == "k"   # k = 0 would put the normal rule's tau at the references' mean
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0 \
                    or (positive and v == 0):
                raise RemovalNetError(f"threshold parameter {key}={v!r} must be a finite number "
                                      f"{'> 0.0' if positive else '>= 0.0'}")
            object.__setattr__(self, key, float(v))
        if self.q > 100:
            raise RemovalNetError(f"threshold parameter q={self.q!r} must be <= 100")

    @classmethod
    def parse(cls, value: "ThresholdRule | str | Mapping[str, Any] | None", **overrides: Any) -> "ThresholdRule":
        """A rule from a name, a mapping with ``name`` and parameters, or a rule (None: ``minmax``);
        ``overrides`` (k, q, margin; None values ignored) replace its parameters."""
        if value is None:
            rule = cls()
        elif isinstance(value, ThresholdRule):
            rule = value
        elif isinstance(value, str):
            rule = cls(value)
        elif isinstance(value, Mapping):
            known = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise RemovalNetError(f"unknown threshold rule key {unknown[0]!r}; known: {', '.join(sorted(known))}")
            rule = cls(**value)
            _check_used(rule.name, [k for k in value if k != "name"])
        else:
            raise RemovalNetError(f"a threshold rule is a name or a mapping with a name, got {value!r}")
        given = {k: v for k, v in overrides.items() if v is not None}
        _check_used(rule.name, given)
        return dataclasses.replace(rule, **given) if given else rule

    def params(self) -> dict[str, float]:
        """The parameters this rule uses."""
        return {k: getattr(self, k) for k in RULE_PARAMS[self.name]}

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.params()}

    def spec_value(self) -> "str | dict[str, Any]":
        """How a spec writes this rule: its name alone when its parameters are the defaults."""
        default = ThresholdRule(self.name)
        return self.name if self.params() == default.params() else self.to_dict()

    def describe(self) -> str:
        p = self.params()
        return self.name + (f" ({', '.join(f'{k}={v:g}' for k, v in p.items())})" if p else "")

    def calibrate(self, values_by_metric: Mapping[str, Sequence[float]],
                  metrics: Mapping[str, Metric] | Iterable[Metric | str], *,
                  min_references: int = MIN_REFERENCES) -> dict[str, float]:
        return calibrate(values_by_metric, metrics, self, min_references=min_references)


def _check_used(name: str, keys: Iterable[str]) -> None:
    """A parameter given for a rule that does not use it is an error (it would be ignored silently)."""
    for key in keys:
        if key not in RULE_PARAMS.get(name, ()):
            takes = ", ".join(f"{r}: {' and '.join(p) or 'none'}" for r, p in RULE_PARAMS.items())
            raise RemovalNetError(f"the {name} rule takes no parameter {key} (rules and their parameters: {takes})")


def resolve_metric(metric: Metric | str, metrics: Mapping[str, Metric] | Iterable[Metric] | None = None) -> Metric:
    """A :class:`Metric` from itself or its name (looked up in ``metrics``, else in every registered verifier)."""
    if isinstance(metric, Metric):
        return metric
    table = _metric_table(metrics) if metrics is not None else all_metrics()
    if metric not in table:
        raise RemovalNetError(f"unknown metric {metric!r}; known: {', '.join(table) or 'none'}")
    return table[metric]


def _metric_table(metrics: Mapping[str, Metric] | Iterable[Metric | str]) -> dict[str, Metric]:
    if isinstance(metrics, Mapping):
        return {name: resolve_metric(m) for name, m in metrics.items()}
    out = {}
    for m in metrics:
        m = resolve_metric(m)
        out[m.name] = m
    return out


def _finite(values: Sequence[float], what: str) -> np.ndarray:
    arr = np.asarray([float(v) for v in values], dtype=np.float64)
    if arr.size and not np.all(np.isfinite(arr)):
        raise RemovalNetError(f"{what} contains a non-finite value: {values!r}")
    return arr


def _tau(values: np.ndarray, direction: str, rule: str, k: float, q: float, margin: float, name: str) -> float:
    if values.size == 0:
        raise RemovalNetError(f"no reference values for metric {name!r}: cannot calibrate its threshold")
    dist = direction == "distance"
    if rule == "minmax":
        return float(values.min() if dist else values.max())
    if rule == "normal":
        if values.size < 2:
            raise RemovalNetError(f"rule 'normal' needs at least 2 reference values for {name!r}, got 1")
        mu, sd = float(values.mean()), float(values.std(ddof=1))
        return mu - k * sd if dist else mu + k * sd
    # percentile
    spread = float(values.max() - values.min())
    if dist:
        return float(np.percentile(values, q)) - margin * spread
    return float(np.percentile(values, 100.0 - q)) + margin * spread


def calibrate(values_by_metric: Mapping[str, Sequence[float]], metrics: Mapping[str, Metric] | Iterable[Metric | str],
              rule: "ThresholdRule | str" = "minmax", *, k: float | None = None, q: float | None = None,
              margin: float | None = None, min_references: int = MIN_REFERENCES) -> dict[str, float]:
    """tau per metric from the values reference models reach against the victim.

    Args:
        values_by_metric: metric name -> the reference models' values (one per reference model).
        metrics: the metrics to calibrate (Metric objects or registered names); every one needs values.
        rule: a :class:`ThresholdRule`, or a rule's name: "minmax" (paper section 4.1.4), "normal"
            (mean -/+ k*std) or "percentile" (q, margin); ``k``, ``q``, ``margin`` replace its parameters.
    """
    rule = ThresholdRule.parse(rule, k=k, q=q, margin=margin)
    table = _metric_table(metrics)
    values = {}
    few: dict[int, list[str]] = {}   # reference count -> the metrics calibrated from so few (one warning each)
    for name in table:
        if name not in values_by_metric:
            raise RemovalNetError(f"no reference values for metric {name!r}: cannot calibrate its threshold")
        values[name] = _finite(values_by_metric[name], f"reference values of {name}")
        if 0 < values[name].size < min_references:
            few.setdefault(int(values[name].size), []).append(name)
    for n, names in few.items():
        warnings.warn(f"thresholds of {', '.join(names)} calibrated from {n} reference model(s); at least "
                      f"{min_references} independently trained models are recommended", stacklevel=2)
    return {name: _tau(values[name], metric.direction, rule.name, rule.k, rule.q, rule.margin, name)
            for name, metric in table.items()}


def verdict(metric: Metric | str, value: float, tau: float) -> bool:
    """True (a copy) when a distance is strictly below tau or a similarity strictly above it."""
    m = resolve_metric(metric)
    value, tau = float(value), float(tau)
    if math.isnan(value) or math.isnan(tau):
        raise RemovalNetError(f"cannot judge {m.name}: value {value} / threshold {tau} is not a number")
    return value < tau if m.direction == "distance" else value > tau


def false_positive_rate(metric: Metric | str, values: Sequence[float], tau: float) -> float:
    """Fraction of held-out independent models (their values against the victim) judged copies."""
    m = resolve_metric(metric)
    vals = _finite(values, f"values of {m.name}")
    if vals.size == 0:
        raise RemovalNetError(f"no independent-model values for {m.name}: cannot compute a false-positive rate")
    return float(np.mean([verdict(m, v, tau) for v in vals]))


def score_model(verifiers: Sequence[Verifier], fingerprints: Mapping[str, Fingerprint] | Sequence[Fingerprint],
                victim: nn.Module, model: nn.Module, *, device: str | torch.device | None = None,
                errors: dict[str, str] | None = None,
                progress: "Callable[[str], None] | None" = None) -> dict[str, float]:
    """Every metric of every verifier for ``model`` against ``victim`` (the one scoring path of the score jobs,
    ``removalnet verify`` and :func:`calibrate_models`). ``fingerprints``: by verifier name or in the order of
    ``verifiers``. With an ``errors`` mapping, a verifier that raises :class:`RemovalNetError` records its
    message under each of its metrics there and the others go on; without one the error propagates. A metric
    the fingerprint declares degenerate gets no value; a non-finite value is an error, never a number.
    ``progress(name)`` is called after each verifier has scored (a progress bar's update)."""
    verifiers = list(verifiers)
    fps = ([fingerprints[v.name] for v in verifiers] if isinstance(fingerprints, Mapping) else list(fingerprints))
    values: dict[str, float] = {}
    for v, fp in zip(verifiers, fps):
        try:
            scored = v.score(fp, victim, model, device=device)
        except RemovalNetError as e:
            if errors is None:
                raise
            for m in v.metrics:
                errors[m.name] = str(e)
            continue
        finally:
            if progress is not None:
                progress(v.name)
        degenerate = set(fp.meta.get("degenerate", ()))
        for name, val in scored.items():
            if name in degenerate:
                continue  # the fingerprint holds no evidence for it: never a value
            if not math.isfinite(val):  # never shown or judged as a number
                if errors is None:
                    raise RemovalNetError(f"{name} is not finite ({val})")
                errors[name] = f"the metric is not finite ({val})"
                continue
            values[name] = val
    return values


class Calibration(NamedTuple):
    taus: dict[str, float]
    values: dict[str, list[float]]


def calibrate_models(verifiers: Sequence[Verifier], fingerprints: Mapping[str, Fingerprint] | Sequence[Fingerprint],
                     victim: nn.Module, reference_models: Sequence[nn.Module], *,
                     rule: "ThresholdRule | str" = "minmax", device: str | torch.device | None = None,
                     exclude: Iterable[str] = (), fingerprints_for: "Callable[[nn.Module], Mapping[str, Fingerprint]] | None" = None,
                     progress: "Callable[[str], None] | None" = None, **rule_params: float) -> Calibration:
    """Score every reference model with every verifier, then :func:`calibrate` (returns taus and raw values).

    ``fingerprints``: the victim's fingerprints, by verifier name or in the order of ``verifiers``. Metrics named
    in ``exclude`` (e.g. ones a fingerprint declares degenerate) get their values but no threshold.
    ``fingerprints_for(model)``: the fingerprints to score one reference with (e.g. per-suspect ones from a cache).
    ``progress``: passed to :func:`score_model` for every reference.
    """
    verifiers = list(verifiers)
    if isinstance(fingerprints, Mapping):
        missing = [v.name for v in verifiers if v.name not in fingerprints]
        if missing:
            raise RemovalNetError(f"no fingerprint given for verifier {missing[0]!r}")
        fps = [fingerprints[v.name] for v in verifiers]
    else:
        fps = list(fingerprints)
        if len(fps) != len(verifiers):
            raise RemovalNetError(f"{len(verifiers)} verifiers but {len(fps)} fingerprints")
    refs = list(reference_models)
    if not refs:
        raise RemovalNetError("calibrating thresholds needs at least one reference model")
    if len(refs) < MIN_REFERENCES:
        warnings.warn(f"thresholds calibrated from {len(refs)} reference model(s); at least {MIN_REFERENCES} "
                      "independently trained models are recommended", stacklevel=2)
    values: dict[str, list[float]] = {m.name: [] for v in verifiers for m in v.metrics}
    metrics = [m for v in verifiers for m in v.metrics]
    for ref in refs:
        ref_fps = fingerprints_for(ref) if fingerprints_for is not None else fps
        for name, val in score_model(verifiers, ref_fps, victim, ref, device=device, progress=progress).items():
            values[name].append(val)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # already warned once above
        skip = set(exclude)
        taus = calibrate({k: v for k, v in values.items() if k not in skip},
                         [m for m in metrics if m.name not in skip], rule, **rule_params)
    return Calibration(taus, values)
