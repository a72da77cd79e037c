"""Thresholds from reference models (paper section 4.1.4) on hand-made values."""
import math
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from removalnet.utils import RemovalNetError
from removalnet.verify import Metric, Verifier
from removalnet.verify.thresholds import (MIN_REFERENCES, calibrate, calibrate_models, false_positive_rate,
                                          verdict)

D = Metric("T-D", "distance")
S = Metric("T-S", "similarity")
FIVE_D = [0.5, 0.2, 0.9, 0.4, 0.7]
FIVE_S = [0.3, 0.8, 0.6, 0.1, 0.5]


def test_minmax_is_lowest_distance_and_highest_similarity():
    taus = calibrate({"T-D": FIVE_D, "T-S": FIVE_S}, [D, S])
    assert taus == pytest.approx({"T-D": 0.2, "T-S": 0.8})


def test_minmax_never_judges_a_reference_a_copy():
    taus = calibrate({"T-D": FIVE_D, "T-S": FIVE_S}, [D, S])
    assert false_positive_rate(D, FIVE_D, taus["T-D"]) == pytest.approx(0.0, abs=1e-15)
    assert false_positive_rate(S, FIVE_S, taus["T-S"]) == pytest.approx(0.0, abs=1e-15)


def test_normal_rule_golden():
    # distances 1..5: mean 3, sample std sqrt(10/4) = 1.5811388; k = 1 -> 3 - 1.5811388 = 1.4188612
    # similarities .2..1.0: mean .6, squared deviations sum to 0.4, sample std sqrt(0.4 / 4) = 0.3162278
    # -> tau = .6 + 1 x .3162278
    taus = calibrate({"T-D": [1, 2, 3, 4, 5], "T-S": [0.2, 0.4, 0.6, 0.8, 1.0]}, [D, S], "normal", k=1.0)
    assert taus["T-D"] == pytest.approx(1.4188612, abs=1e-6)
    assert taus["T-S"] == pytest.approx(0.9162278, abs=1e-6)
    # default k = 2: 3 - 2 * 1.5811388 = -0.1622777
    assert calibrate({"T-D": [1, 2, 3, 4, 5]}, [D], "normal")["T-D"] == pytest.approx(-0.1622777, abs=1e-6)


def test_percentile_rule_golden():
    # numpy linear interpolation on 1..5: the 25th percentile sits at position 0.25 * 4 = 1 -> 2.0;
    # the 75th at position 3 -> 4.0; margin 0.1 x range 4 = 0.4 moves tau towards "not a copy"
    vals = [5, 1, 4, 2, 3]
    assert calibrate({"T-D": vals}, [D], "percentile", q=25)["T-D"] == pytest.approx(2.0)
    assert calibrate({"T-S": vals}, [S], "percentile", q=25)["T-S"] == pytest.approx(4.0)
    assert calibrate({"T-D": vals}, [D], "percentile", q=25, margin=0.1)["T-D"] == pytest.approx(1.6)
    assert calibrate({"T-S": vals}, [S], "percentile", q=25, margin=0.1)["T-S"] == pytest.approx(4.4)
    # q = 0 is the minmax rule
    assert calibrate({"T-D": vals}, [D], "percentile", q=0)["T-D"] == pytest.approx(1.0)


def test_verdict_both_directions_and_ties():
    assert verdict(D, 0.19, 0.2) is True
    assert verdict(D, 0.2, 0.2) is False          # tie: not strictly less
    assert verdict(D, 0.21, 0.2) is False
    assert verdict(S, 0.81, 0.8) is True
    assert verdict(S, 0.8, 0.8) is False          # tie: not strictly greater
    assert verdict(S, 0.79, 0.8) is False
    assert verdict("DJ-LOD", 0.0, 1e-9) is True   # registered metric looked up by name
    with pytest.raises(RemovalNetError, match="not a number"):
        verdict(D, float("nan"), 0.2)


def test_false_positive_rate_golden():
    # held-out independent models; tau 0.2: 0.1 and 0.15 are < 0.2, 0.2 is a tie (no), 0.3 no -> 2 / 4
    assert false_positive_rate(D, [0.1, 0.2, 0.3, 0.15], 0.2) == pytest.approx(0.5)
    # similarity tau 0.8: only 0.9 is > 0.8 -> 1 / 5
    assert false_positive_rate(S, [0.9, 0.8, 0.1, 0.5, 0.7], 0.8) == pytest.approx(0.2)
    with pytest.raises(RemovalNetError):
        false_positive_rate(D, [], 0.2)


def test_calibrate_errors_and_warning():
    with pytest.raises(RemovalNetError, match="unknown threshold rule"):
        calibrate({"T-D": FIVE_D}, [D], "median")
    with pytest.raises(RemovalNetError, match="T-S"):
        calibrate({"T-D": FIVE_D}, [D, S])
    with pytest.raises(RemovalNetError, match="non-finite"):
        calibrate({"T-D": [0.1, math.inf, 0.3, 0.4, 0.5]}, [D])
    with pytest.raises(RemovalNetError, match="at least 2"), pytest.warns(UserWarning):
        calibrate({"T-D": [0.1]}, [D], "normal")
    with pytest.raises(RemovalNetError, match="k="):
        calibrate({"T-D": FIVE_D}, [D], "normal", k=-1)
    with pytest.raises(RemovalNetError, match="unknown metric"):
        calibrate({"X": FIVE_D}, ["NO-SUCH-METRIC"])
    with pytest.warns(UserWarning, match="at least 5"):
        calibrate({"T-D": FIVE_D[:3]}, [D])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        calibrate({"T-D": FIVE_D}, [D])  # 5 references: no warning
    assert MIN_REFERENCES == 5


class _Toy(Verifier):
    """Victim outputs on two inputs; T-D = mean |out_V - out_S|, T-S = 1 / (1 + T-D)."""
    name = "toy-thresholds"
    metrics = (D, S)

    def _extract(self, victim, data, *, seed, generator, device):
        x = data.tensors[0]
        return {"x": x, "out": victim(x)}, {}

    def _score(self, fp, victim, suspect, *, device):
        d = float((fp.tensors["out"] - suspect(fp.tensors["x"])).abs().mean())
        return {"T-D": d, "T-S": 1 / (1 + d)}


def _linear(w):
    m = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(w)
    return m


def test_calibrate_models_scores_every_reference():
    data = TensorDataset(torch.tensor([[1.0], [2.0]]), torch.tensor([0, 0]))
    victim, toy = _linear(1.0), _Toy()
    fp = toy.extract(victim, data)
    # T-D = |w - 1| * mean(1, 2) = 1.5 |w - 1|: refs 2, 3, 0.5, -1, 4 -> 1.5, 3, 0.75, 3, 4.5
    refs = [_linear(w) for w in (2.0, 3.0, 0.5, -1.0, 4.0)]
    cal = calibrate_models([toy], {"toy-thresholds": fp}, victim, refs)
    assert cal.values["T-D"] == pytest.approx([1.5, 3.0, 0.75, 3.0, 4.5])
    assert cal.taus["T-D"] == pytest.approx(0.75)
    assert cal.taus["T-S"] == pytest.approx(1 / 1.75)
    taus, values = cal  # unpacks as (taus, values)
    near = toy.score(fp, victim, _linear(1.2))   # T-D 0.3: a copy by both metrics
    assert verdict(D, near["T-D"], taus["T-D"]) and verdict(S, near["T-S"], taus["T-S"])
    far = toy.score(fp, victim, _linear(0.5))    # ties the closest reference: not a copy
    assert not verdict(D, far["T-D"], taus["T-D"]) and not verdict(S, far["T-S"], taus["T-S"])
    with pytest.warns(UserWarning, match="at least 5"):
        calibrate_models([toy], [fp], victim, refs[:2])
    with pytest.raises(RemovalNetError, match="at least one reference"):
        calibrate_models([toy], [fp], victim, [])


def test_threshold_rule_object_parses_validates_and_round_trips():
    from removalnet.verify import ThresholdRule
    assert ThresholdRule.parse(None) == ThresholdRule("minmax") and ThresholdRule.parse("minmax").spec_value() == "minmax"
    r = ThresholdRule.parse({"name": "percentile", "q": 10})
    assert r.to_dict() == {"name": "percentile", "q": 10.0, "margin": 0.0} and ThresholdRule.parse(r.spec_value()) == r
    assert ThresholdRule.parse("normal", k=3, q=None).k == 3.0
    for bad in ("median", {"name": "normal", "kk": 1}, {"name": "normal", "k": -1}, {"name": "percentile", "q": 101}, 3):
        with pytest.raises(RemovalNetError):
            ThresholdRule.parse(bad)
    assert ThresholdRule.parse({"name": "percentile", "q": 10, "margin": 0.5}).params() == {"q": 10.0, "margin": 0.5}
    for bad, msg in [({"name": "normal", "k": 0}, "k=0 must be a finite number > 0"),
                     ({"name": "minmax", "k": 3}, "the minmax rule takes no parameter k"),
                     ({"k": 3}, "the minmax rule takes no parameter k"),
                     ({"name": "normal", "margin": 0.1}, "the normal rule takes no parameter margin")]:
        with pytest.raises(RemovalNetError, match=msg):
            ThresholdRule.parse(bad)
    with pytest.raises(RemovalNetError, match="the percentile rule takes no parameter k"):
        ThresholdRule.parse("percentile", k=2, q=None)       # an override the rule would ignore
    with pytest.raises(RemovalNetError, match="k=0.0 must be"):
        ThresholdRule.parse("normal", k=0.0)
