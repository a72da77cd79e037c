"""How much a verdict can be trusted: p-values, multiple-testing corrections, ROC-AUC, TPR at a low FPR and
Clopper-Pearson intervals, all from the values independent models reach against the victim (docs/confidence.md).

Every function takes the metric's ``direction`` ("distance": smaller = more copy-like; "similarity": larger =
more copy-like, as :class:`~removalnet.verify.base.Metric`), so callers never flip signs themselves.

* :func:`empirical_pvalue`: ``(1 + #{references at least as copy-like}) / (n + 1)``; valid for any
  distribution when the suspect, were it independent, is exchangeable with the references. It can never go
  below ``1 / (n + 1)`` (:func:`pvalue_floor`), so a level ``a`` needs ``n >= ceil(1/a) - 1`` references
  (:func:`references_needed`).
* :func:`parametric_pvalue`: a Student-t prediction interval on the references' values (on their logarithm for
  positive distances); it goes below the floor but assumes normal values, and says when that is doubtful.
* :func:`holm` / :func:`bonferroni` and :func:`combined_verdict`: one verdict over several metrics with the
  family-wise false-positive rate held at ``alpha``.
* :func:`roc_auc`: independent models against copies, with a 95% score interval (Hanley-McNeil variance,
  Newcombe's method 5), never degenerate at AUC = 1.
* :func:`tpr_at_fpr`: the share of copies whose empirical p-value against the independent models is <= ``a``
  (a test whose false-positive rate is at most ``a``), with a Clopper-Pearson interval; ``None`` when the
  independent models are too few for any p-value to reach ``a``.
* :func:`clopper_pearson` / :func:`rate_text`: exact binomial intervals for rates ("0/3, <= 71%").
* :func:`fpr_upper_bound` / :func:`models_for_bound`: the one-sided 95% upper bound on a threshold's
  false-positive rate from the independent models it calls copies (k of n; 1 - 0.05^(1/n) when k = 0), and how
  many independent models bring it below a target (59 for 5%).
"""
from __future__ import annotations

import math
from typing import Mapping, NamedTuple, Sequence

import numpy as np

from ..utils import RemovalNetError

__all__ = ["empirical_pvalue", "pvalue_floor", "references_needed", "ParametricP", "parametric_pvalue", "holm",
           "bonferroni", "combined_verdict", "Combined", "AUC", "roc_auc", "TPR", "tpr_at_fpr", "clopper_pearson",
           "rate_text", "interval_text", "fpr_upper_bound", "models_for_bound", "LEVEL", "DIRECTIONS"]

DIRECTIONS = ("distance", "similarity")
#: the confidence level of every interval
LEVEL = 0.95


def _direction(direction: str) -> str:
    if direction not in DIRECTIONS:
        raise RemovalNetError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
    return direction


def _values(values: Sequence[float], what: str) -> np.ndarray:
    arr = np.asarray([float(v) for v in values], dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise RemovalNetError(f"{what} contains a non-finite value: {list(values)!r}")
    return arr


def _alpha(a: float, what: str = "level") -> float:
    if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0 < a < 1:
        raise RemovalNetError(f"{what} must be a number in (0, 1), got {a!r}")
    return float(a)


def pvalue_floor(n: int) -> float:
    """The smallest empirical p-value ``n`` references can give: ``1 / (n + 1)``."""
    return 1.0 / (int(n) + 1)


def references_needed(a: float) -> int:
    """Independent models needed for an empirical p-value to reach ``a``: ``1 / (n + 1) <= a`` <=> ``n >= ceil(1/a) - 1``."""
    a = _alpha(a)
    return max(1, math.ceil(1.0 / a - 1e-12) - 1)


def empirical_pvalue(value: float, references: Sequence[float], direction: str) -> float:
    """``(1 + #{references at least as copy-like as value}) / (n + 1)``; ties count as "at least as"."""
    direction = _direction(direction)
    refs = _values(references, "reference values")
    if refs.size == 0:
        raise RemovalNetError("an empirical p-value needs at least one reference value")
    v = float(value)
    if not math.isfinite(v):
        raise RemovalNetError(f"cannot compute a p-value of a non-finite value ({v})")
    extreme = refs <= v if direction == "distance" else refs >= v
    return float((1 + int(extreme.sum())) / (refs.size + 1))


class ParametricP(NamedTuple):
    """A parametric p-value: ``p`` (None when it cannot be computed), whether it was computed on logarithms,
    whether its assumptions hold (``ok``) and, when not, why (``note``)."""
    p: float | None
    log: bool
    ok: bool
    note: str


def parametric_pvalue(value: float, references: Sequence[float], direction: str, *, log: bool | None = None,
                      normality_alpha: float = 0.05) -> ParametricP:
    """The probability that a new independent model is at least as copy-like as ``value``, from a Student-t
    prediction interval on the references: with mean ``m``, sample std ``s`` (ddof 1) of the n references,
    ``(X - m) / (s * sqrt(1 + 1/n))`` follows t with n - 1 degrees of freedom when the values are normal.

    ``log``: work on log values (None: for distances whose references are all > 0, since distances are
    positive and skewed). A distance of 0 then has p = 0. Assumptions flagged in ``note`` (``ok`` False): fewer
    than 3 references, a Shapiro-Wilk rejection at ``normality_alpha`` (n >= 3); ``p`` is None with fewer than
    2 references, zero variance, or non-positive values for the log form."""
    direction = _direction(direction)
    refs = _values(references, "reference values")
    v = float(value)
    if not math.isfinite(v):
        raise RemovalNetError(f"cannot compute a p-value of a non-finite value ({v})")
    if log is None:
        log = direction == "distance" and refs.size > 0 and bool(np.all(refs > 0)) and v >= 0
    if refs.size < 2:
        return ParametricP(None, bool(log), False, f"n = {refs.size} < 2 references")
    if log:
        if not np.all(refs > 0) or v < 0:
            return ParametricP(None, True, False, "non-positive values: no log form")
        if v == 0:   # log 0 = -inf: more copy-like than any positive distance
            return ParametricP(0.0 if direction == "distance" else 1.0, True, refs.size >= 3,
                               "" if refs.size >= 3 else "n < 3 references")
        refs, v = np.log(refs), math.log(v)
    from scipy import stats

    n = refs.size
    s = float(refs.std(ddof=1))
    if s <= 1e-12 * max(1.0, float(np.abs(refs).max())):
        return ParametricP(None, bool(log), False, "the references' values do not vary")
    t = (v - float(refs.mean())) / (s * math.sqrt(1 + 1 / n))
    p = float(stats.t.cdf(t, n - 1) if direction == "distance" else stats.t.sf(t, n - 1))
    notes = []
    if n < 3:
        notes.append("n < 3 references")
    else:
        sw = float(stats.shapiro(refs).pvalue)
        if sw < normality_alpha:
            notes.append(f"Shapiro-Wilk rejects normality (p = {sw:.2g})")
    return ParametricP(p, bool(log), not notes, "; ".join(notes))


def bonferroni(pvalues: Sequence[float]) -> list[float]:
    """Bonferroni-adjusted p-values: ``min(1, m * p)``."""
    p = _values(pvalues, "p-values")
    return [float(x) for x in np.minimum(1.0, p.size * p)]


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (in the input order): sorted ascending, the i-th (from 0) becomes
    ``max_{j <= i} min(1, (m - j) * p_(j))``. Controls the family-wise error like Bonferroni, never less powerful."""
    p = _values(pvalues, "p-values")
    m = p.size
    order = np.argsort(p, kind="stable")
    adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adj
    return [float(x) for x in out]


class Combined(NamedTuple):
    """One verdict over several metrics: ``copy`` when some adjusted p-value is <= ``alpha``; ``adjusted``
    per metric; ``method`` "holm" or "bonferroni"."""
    copy: bool
    adjusted: dict[str, float]
    alpha: float
    method: str


def combined_verdict(pvalues: Mapping[str, float], alpha: float = 0.05, method: str = "holm") -> Combined:
    """A copy when at least one metric rejects "independent" after Holm's (or Bonferroni's) adjustment, so the
    chance that an independent model is called a copy by any metric stays <= ``alpha``."""
    alpha = _alpha(alpha, "alpha")
    if method not in ("holm", "bonferroni"):
        raise RemovalNetError(f"method must be 'holm' or 'bonferroni', got {method!r}")
    names = list(pvalues)
    if not names:
        return Combined(False, {}, alpha, method)
    adj = (holm if method == "holm" else bonferroni)([pvalues[k] for k in names])
    adjusted = dict(zip(names, adj))
    return Combined(any(a <= alpha for a in adj), adjusted, alpha, method)


def _copy_scores(values: np.ndarray, direction: str) -> np.ndarray:
    return -values if direction == "distance" else values


class AUC(NamedTuple):
    """ROC-AUC (probability that a copy is more copy-like than an independent model, ties counting half) and
    its 95% interval."""
    auc: float
    low: float
    high: float
    n_independent: int
    n_copies: int


def _hm_variance(theta: float, m: int, n: int) -> float:
    """Hanley-McNeil variance of an AUC theta with both sample sizes replaced by N* = (m + n) / 2 (Newcombe
    2006, method 5)."""
    ns = (m + n) / 2.0 - 1.0
    return theta * (1 - theta) / (m * n) * (1 + ns * ((1 - theta) / (2 - theta) + theta / (1 + theta)))


def roc_auc(independent: Sequence[float], copies: Sequence[float], direction: str, level: float = LEVEL) -> AUC:
    """ROC-AUC between independent models (references and negatives; label 0) and copies (label 1), with the
    score interval of Newcombe (2006, method 5): the theta with ``(AUC - theta)^2 <= z^2 * V(theta)``, V the
    Hanley-McNeil variance at theta with N* = (m + n)/2. Unlike the Wald form it stays wide at AUC = 0 or 1."""
    direction = _direction(direction)
    level = _alpha(level, "level")
    neg = _values(independent, "independent values")
    pos = _values(copies, "copy values")
    if neg.size == 0 or pos.size == 0:
        raise RemovalNetError("an AUC needs at least one independent model and one copy")
    from scipy import optimize, stats
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.zeros(neg.size), np.ones(pos.size)]
    a = float(roc_auc_score(y, _copy_scores(np.r_[neg, pos], direction)))
    m, n = neg.size, pos.size
    z = float(stats.norm.ppf(0.5 + level / 2))

    def excess(theta):   # > 0 outside the interval
        return (a - theta) ** 2 - z * z * _hm_variance(theta, m, n)

    eps = 1e-9   # excess < 0 just beside a (V > 0 there), > 0 at an end outside the interval
    low = 0.0 if a <= eps or excess(0.0) <= 0 else float(optimize.brentq(excess, 0.0, a - eps))
    high = 1.0 if a >= 1 - eps or excess(1.0) <= 0 else float(optimize.brentq(excess, a + eps, 1.0))
    return AUC(a, low, high, m, n)


def clopper_pearson(k: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """The exact (Clopper-Pearson) two-sided interval of a binomial rate k/n: Beta quantiles at (1 - level)/2
    and (1 + level)/2; 0 and 1 at the ends."""
    if isinstance(k, bool) or isinstance(n, bool) or int(k) != k or int(n) != n or not 0 <= k <= n or n < 1:
        raise RemovalNetError(f"a rate needs integers 0 <= k <= n, n >= 1; got {k}/{n}")
    level = _alpha(level, "level")
    from scipy import stats

    k, n = int(k), int(n)
    tail = (1 - level) / 2
    low = 0.0 if k == 0 else float(stats.beta.ppf(tail, k, n - k + 1))
    high = 1.0 if k == n else float(stats.beta.ppf(1 - tail, k + 1, n - k))
    return low, high


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def interval_text(low: float, high: float) -> str:
    """An interval as text: "<= 71%" (from 0), ">= 48%" (to 1), else "12-88%"."""
    if low <= 0:
        return f"<= {_pct(high)}"
    if high >= 1:
        return f">= {_pct(low)}"
    return f"{100 * low:.0f}-{_pct(high)}"


def rate_text(k: int, n: int, level: float = LEVEL) -> str:
    """A rate with its Clopper-Pearson interval: "0/3, <= 71%", "5/5, >= 48%", "2/5, 5-85%"."""
    return f"{int(k)}/{int(n)}, {interval_text(*clopper_pearson(k, n, level))}"


class TPR(NamedTuple):
    """Detection at a false-positive rate <= ``fpr``: ``detected`` of ``n`` copies have an empirical p-value <= fpr
    against the independent models; ``low``/``high`` its Clopper-Pearson interval. ``tpr`` is None ("n too
    small") when the ``n_independent`` models cannot give a p-value that low; ``needed`` says how many can."""
    tpr: float | None
    detected: int
    n: int
    low: float | None
    high: float | None
    fpr: float
    n_independent: int
    needed: int

    def text(self) -> str:
        if self.tpr is None:
            return f"n too small ({self.n_independent} < {self.needed} independent models)"
        return rate_text(self.detected, self.n)


def tpr_at_fpr(independent: Sequence[float], copies: Sequence[float], direction: str, fpr: float,
               level: float = LEVEL) -> TPR:
    """The share of copies caught by the test "empirical p-value against the independent models <= fpr", whose
    false-positive rate is at most ``fpr`` for any exchangeable independent model. With fewer than
    :func:`references_needed` independent models no p-value can reach ``fpr``: the result is "n too small"."""
    fpr = _alpha(fpr, "fpr")
    neg = _values(independent, "independent values")
    pos = _values(copies, "copy values")
    if pos.size == 0:
        raise RemovalNetError("a detection rate needs at least one copy")
    needed = references_needed(fpr)
    if neg.size < needed:
        return TPR(None, 0, int(pos.size), None, None, fpr, int(neg.size), needed)
    k = sum(empirical_pvalue(v, neg, direction) <= fpr + 1e-12 for v in pos)
    low, high = clopper_pearson(k, pos.size, level)
    return TPR(k / pos.size, int(k), int(pos.size), low, high, fpr, int(neg.size), needed)


def fpr_upper_bound(false_positives: int, n: int, level: float = LEVEL) -> float:
    """One-sided ``level`` upper bound on a threshold's false-positive rate when it calls ``false_positives`` of
    ``n`` independent models copies: the Clopper-Pearson bound ``Beta(level; k + 1, n - k)`` (1 when k = n),
    ``1 - (1 - level)^(1/n)`` for k = 0. For a threshold set from those same models (the minmax tau: k = 0) it is
    exact and distribution-free: the false-positive rate of the most extreme of n values follows Beta(1, n)."""
    if isinstance(false_positives, bool) or int(false_positives) != false_positives or int(n) != n \
            or not 0 <= false_positives <= n or n < 1:
        raise RemovalNetError(f"a false-positive count needs integers 0 <= k <= n, n >= 1; got {false_positives}/{n}")
    level = _alpha(level, "level")
    k, n = int(false_positives), int(n)
    if k == n:
        return 1.0
    from scipy import stats

    return float(stats.beta.ppf(level, k + 1, n - k))


def models_for_bound(max_fpr: float, level: float = LEVEL) -> int:
    """Independent models needed, none called a copy, for :func:`fpr_upper_bound` to go below ``max_fpr``:
    the smallest n with ``1 - (1 - level)^(1/n) < max_fpr``, i.e. ``n > ln(1 - level) / ln(1 - max_fpr)``."""
    max_fpr, level = _alpha(max_fpr, "max_fpr"), _alpha(level, "level")
    return math.floor(math.log(1 - level) / math.log(1 - max_fpr)) + 1
