"""Golden tests of verify.confidence: every number recomputed here by a different route (sorting, pairwise
counts, scipy distributions' own location/scale, binomial tails, a grid search) on small hand-made score sets."""
import math

import numpy as np
import pytest
from scipy import optimize, stats

from removalnet.utils import RemovalNetError
from removalnet.verify.confidence import (bonferroni, clopper_pearson, combined_verdict, empirical_pvalue,
                                          fpr_upper_bound, holm, models_for_bound, parametric_pvalue, pvalue_floor,
                                          rate_text, references_needed, roc_auc, tpr_at_fpr)

# independent models' values against a victim and copies' values; a distance (copies smaller) and a similarity
# (copies larger), with ties, at n = 2, 3, 5, 10
DIST = {2: [0.8, 1.1], 3: [0.9, 0.7, 0.9], 5: [1.2, 0.9, 1.0, 0.9, 1.4],
        10: [1.0, 1.3, 0.8, 1.1, 0.95, 1.2, 1.0, 0.85, 1.5, 1.05]}
SIM = {2: [0.10, 0.20], 3: [0.14, 0.10, 0.10], 5: [0.3, 0.1, 0.2, 0.2, 0.25],
       10: [0.3, 0.1, 0.2, 0.2, 0.25, 0.15, 0.05, 0.3, 0.12, 0.18]}
COPIES = {"distance": [0.1, 0.9, 0.2, 1.2, 0.05], "similarity": [0.9, 0.2, 0.8, 0.1, 0.95]}


def _p_by_sorting(v, refs, direction):
    s = np.sort(refs)
    n = len(s)
    # distances: refs <= v; similarities: refs >= v
    c = np.searchsorted(s, v, side="right") if direction == "distance" else n - np.searchsorted(s, v, side="left")
    return (c + 1) / (n + 1)


@pytest.mark.parametrize("n", [2, 3, 5, 10])
@pytest.mark.parametrize("direction", ["distance", "similarity"])
def test_empirical_pvalue_matches_sorting_with_ties(n, direction):
    refs = (DIST if direction == "distance" else SIM)[n]
    probes = sorted(set(refs)) + COPIES[direction] + [min(refs) - 1, max(refs) + 1]
    for v in probes:
        assert empirical_pvalue(v, refs, direction) == pytest.approx(_p_by_sorting(v, refs, direction), abs=1e-12)
    # the floor 1/(n+1) is reached by the most copy-like value and never crossed
    best = min(refs) - 1 if direction == "distance" else max(refs) + 1
    assert empirical_pvalue(best, refs, direction) == pytest.approx(pvalue_floor(n), abs=1e-12)


def test_empirical_pvalue_hand_values():
    # a similarity in steps of 0.02 with a tie: 0.10 is matched by all three references, 0.14 by one
    refs = [0.14, 0.10, 0.10]
    assert empirical_pvalue(0.10, refs, "similarity") == pytest.approx(1.0)
    assert empirical_pvalue(0.14, refs, "similarity") == pytest.approx(0.5)
    assert empirical_pvalue(0.16, refs, "similarity") == pytest.approx(0.25)
    # the same numbers as distances: smaller is more copy-like
    assert empirical_pvalue(0.10, refs, "distance") == pytest.approx(0.75)
    assert empirical_pvalue(0.08, refs, "distance") == pytest.approx(0.25)
    assert references_needed(0.05) == 19 and references_needed(0.01) == 99 and references_needed(0.2) == 4
    assert pvalue_floor(19) <= 0.05 < pvalue_floor(18)


def _t_prediction(v, refs, lower_tail):
    refs = np.asarray(refs, float)
    n = len(refs)
    dist = stats.t(df=n - 1, loc=refs.mean(), scale=refs.std(ddof=1) * math.sqrt(1 + 1 / n))
    return dist.cdf(v) if lower_tail else dist.sf(v)


@pytest.mark.parametrize("n", [2, 3, 5, 10])
def test_parametric_pvalue_log_distance_and_similarity(n):
    for v in COPIES["distance"]:
        r = parametric_pvalue(v, DIST[n], "distance")
        assert r.log
        assert r.p == pytest.approx(_t_prediction(math.log(v), np.log(DIST[n]), True), rel=1e-9)
        plain = parametric_pvalue(v, DIST[n], "distance", log=False)
        assert not plain.log and plain.p == pytest.approx(_t_prediction(v, DIST[n], True), rel=1e-9)
    for v in COPIES["similarity"]:
        r = parametric_pvalue(v, SIM[n], "similarity")
        assert not r.log
        assert r.p == pytest.approx(_t_prediction(v, SIM[n], False), rel=1e-9)
    normal = n >= 3 and stats.shapiro(np.log(DIST[n])).pvalue >= 0.05
    assert parametric_pvalue(0.5, DIST[n], "distance").ok == normal
    if n == 2:
        assert "n < 3" in parametric_pvalue(0.5, DIST[n], "distance").note


def test_parametric_pvalue_flags_failed_assumptions():
    assert parametric_pvalue(0.1, [0.5], "distance").p is None
    flat = parametric_pvalue(0.1, [0.5, 0.5, 0.5], "distance")
    assert flat.p is None and not flat.ok and "vary" in flat.note
    neg = parametric_pvalue(0.1, [-0.2, 0.3, 0.5], "distance", log=True)
    assert neg.p is None and not neg.ok
    auto = parametric_pvalue(0.1, [-0.2, 0.3, 0.5], "distance")   # not all positive: plain values
    assert not auto.log and auto.p is not None
    assert parametric_pvalue(0.0, DIST[5], "distance").p == pytest.approx(0.0)
    skew = [1.0] * 9 + [50.0]   # one far outlier among ten: Shapiro-Wilk rejects
    r = parametric_pvalue(0.9, skew, "similarity")
    assert not r.ok and "Shapiro" in r.note and r.p is not None


def _holm_loop(p):
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    out, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


@pytest.mark.parametrize("p", [[0.01, 0.04, 0.03, 0.005], [0.2, 0.2, 0.01], [1 / 6] * 7, [0.5]])
def test_holm_and_bonferroni(p):
    assert holm(p) == pytest.approx(_holm_loop(p), abs=1e-12)
    assert bonferroni(p) == pytest.approx([min(1.0, len(p) * x) for x in p], abs=1e-12)
    assert all(h <= b + 1e-12 for h, b in zip(holm(p), bonferroni(p)))


def test_combined_verdict():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    c = combined_verdict({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.005}, alpha=0.05)
    assert c.copy and c.adjusted["d"] == pytest.approx(0.02)
    # five references and seven metrics: the best p-value 1/6 can never make a combined copy
    five = combined_verdict({f"m{i}": 1 / 6 for i in range(7)})
    assert not five.copy and min(five.adjusted.values()) == pytest.approx(1.0)
    assert not combined_verdict({}).copy
    with pytest.raises(RemovalNetError):
        combined_verdict({"a": 0.1}, method="fdr")


def _auc_pairs(neg, pos, direction):
    sgn = -1 if direction == "distance" else 1
    wins = sum((sgn * p > sgn * q) + 0.5 * (p == q) for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def _hanley_mcneil_var(a, n1, n2):
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    return (a * (1 - a) + (n1 - 1) * (q1 - a * a) + (n2 - 1) * (q2 - a * a)) / (n1 * n2)


def _score_interval_grid(a, m, n):
    ns = (m + n) / 2
    grid = np.linspace(0, 1, 200001)
    inside = [(a - t) ** 2 <= 1.959963984540054 ** 2 * _hanley_mcneil_var(t, ns, ns) * ns * ns / (m * n)
              for t in grid]
    kept = grid[np.asarray(inside)]
    return kept.min(), kept.max()


@pytest.mark.parametrize("n", [2, 3, 5, 10])
@pytest.mark.parametrize("direction", ["distance", "similarity"])
def test_roc_auc_and_interval(n, direction):
    neg = (DIST if direction == "distance" else SIM)[n]
    pos = COPIES[direction]
    r = roc_auc(neg, pos, direction)
    assert r.auc == pytest.approx(_auc_pairs(neg, pos, direction), abs=1e-12)
    lo, hi = _score_interval_grid(r.auc, len(neg), len(pos))
    assert r.low == pytest.approx(lo, abs=2e-5) and r.high == pytest.approx(hi, abs=2e-5)
    assert r.low <= r.auc <= r.high


def test_roc_auc_perfect_separation_keeps_a_wide_interval():
    r = roc_auc([1.0, 1.1, 0.9], [0.1, 0.2], "distance")
    assert r.auc == pytest.approx(1.0) and r.high == pytest.approx(1.0)
    assert r.low < 0.7   # 3 vs 2 models cannot prove near-perfect separation
    tie = roc_auc([0.5, 0.5], [0.5, 0.5], "similarity")
    assert tie.auc == pytest.approx(0.5) and tie.low < 0.5 < tie.high


def _cp_by_binomial_tails(k, n, level=0.95):
    tail = (1 - level) / 2
    lo = 0.0 if k == 0 else optimize.brentq(lambda p: stats.binom.sf(k - 1, n, p) - tail, 1e-12, 1 - 1e-12)
    hi = 1.0 if k == n else optimize.brentq(lambda p: stats.binom.cdf(k, n, p) - tail, 1e-12, 1 - 1e-12)
    return lo, hi


@pytest.mark.parametrize("k,n", [(0, 2), (0, 3), (1, 3), (5, 5), (2, 5), (0, 10), (7, 10), (0, 59)])
def test_clopper_pearson(k, n):
    assert clopper_pearson(k, n) == pytest.approx(_cp_by_binomial_tails(k, n), abs=1e-8)


def test_rate_text():
    assert rate_text(0, 3) == "0/3, <= 71%"
    assert rate_text(5, 5) == "5/5, >= 48%"
    assert rate_text(2, 5) == "2/5, 5-85%"
    assert clopper_pearson(0, 3)[1] == pytest.approx(1 - 0.025 ** (1 / 3))


@pytest.mark.parametrize("direction", ["distance", "similarity"])
def test_tpr_at_fpr(direction):
    refs = (DIST if direction == "distance" else SIM)[10] * 2   # 20 independent models (ties in pairs)
    pos = COPIES[direction]
    r = tpr_at_fpr(refs, pos, direction, 0.05)
    # by counting: a copy is caught when (1 + #{independent at least as copy-like}) / 21 <= 0.05, i.e. none is
    sgn = -1 if direction == "distance" else 1
    k = sum(sum(sgn * q >= sgn * p for q in refs) == 0 for p in pos)
    assert r.detected == k and r.n == len(pos) and r.tpr == pytest.approx(k / len(pos))
    assert (r.low, r.high) == pytest.approx(_cp_by_binomial_tails(k, len(pos)), abs=1e-8)
    # 10 independent models cannot reach 5% (needs 19) or 1% (needs 99): never a number
    for fpr, need in ((0.05, 19), (0.01, 99)):
        small = tpr_at_fpr(refs[:10], pos, direction, fpr)
        assert small.tpr is None and small.needed == need and "n too small" in small.text()
    assert "n too small" in tpr_at_fpr(refs, pos, direction, 0.01).text()


def test_bad_input_is_refused():
    with pytest.raises(RemovalNetError):
        empirical_pvalue(0.1, [], "distance")
    with pytest.raises(RemovalNetError):
        empirical_pvalue(0.1, [0.2], "closeness")
    with pytest.raises(RemovalNetError):
        empirical_pvalue(float("nan"), [0.2], "distance")
    with pytest.raises(RemovalNetError):
        clopper_pearson(4, 3)
    with pytest.raises(RemovalNetError):
        tpr_at_fpr([0.1], [0.2], "distance", 0.0)


@pytest.mark.parametrize("k,n", [(0, 3), (0, 59), (1, 5), (2, 10), (0, 1)])
def test_fpr_upper_bound_is_the_one_sided_binomial_bound(k, n):
    # one-sided 95%: the rate p with P(X <= k | n, p) = 0.05
    want = optimize.brentq(lambda p: stats.binom.cdf(k, n, p) - 0.05, 1e-12, 1 - 1e-12)
    assert fpr_upper_bound(k, n) == pytest.approx(want, abs=1e-8)
    assert fpr_upper_bound(n, n) == pytest.approx(1.0)


def test_models_for_bound():
    # 0.95^59 = 0.0485 < 0.05 <= 0.95^58: 59 models with no false positive bound the rate below 5%
    assert models_for_bound(0.05) == 59 and fpr_upper_bound(0, 59) < 0.05 <= fpr_upper_bound(0, 58)
    for a in (0.01, 0.1, 0.3, 0.7):
        n = models_for_bound(a)
        assert fpr_upper_bound(0, n) < a <= fpr_upper_bound(0, n - 1) if n > 1 else fpr_upper_bound(0, n) < a
    # the order statistic: the minmax threshold's false-positive rate is Beta(1, n); its 95% quantile is the bound
    rng = np.random.default_rng(0)
    fprs = [stats.norm.sf(rng.standard_normal(10).max()) for _ in range(4000)]
    assert np.quantile(fprs, 0.95) == pytest.approx(fpr_upper_bound(0, 10), abs=0.02)
