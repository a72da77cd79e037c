"""The attack interface: parameters, registry, batch stream, the shared loop, substitute sets."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from removalnet import create_model, weights_hash
from removalnet.attacks import (Attack, BatchStream, Param, SubstituteSet, build_substitute, create_attack,
                                list_attacks, make_schedule, make_sgd)
from removalnet.attacks.base import attack_class, register_attack
from removalnet.data import dataset_labels, load_dataset
from removalnet.train import predict_logits
from removalnet.utils import RemovalNetError


class _CE(Attack):
    """Plain CE fine-tuning through the shared loop (not registered)."""

    name = "test-ce"
    PARAMS = {"scale": Param(1.0, float, low=0.0, low_open=True)}

    def run(self, ctx):
        def step(x, y, t):
            loss = self.params["scale"] * F.cross_entropy(ctx.surrogate(x), y)
            return loss, {"loss": loss.detach(), "skipped": None}
        self.fit(ctx, step)


def _tiny():
    torch.manual_seed(0)
    return create_model("vgg_small", 10, 1, 28, width=4)


def _data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.rand(n, 1, 28, 28, generator=g), torch.arange(n) % 10)


# ---------------------------------------------------------------------------------------------- params

def test_param_validation_types_ranges_choices():
    p = Param(0.5, float, low=0.0, high=1.0)
    assert p.validate("a", 1) == 1.0 and isinstance(p.validate("a", 1), float)
    for bad in (1.5, -0.1, "0.5", True, float("nan"), None):
        with pytest.raises(RemovalNetError, match="'a'"):
            p.validate("a", bad)
    i = Param(3, int, low=0)
    assert i.validate("n", 4.0) == 4 and isinstance(i.validate("n", 4.0), int)
    for bad in (-1, 2.5, False):
        with pytest.raises(RemovalNetError, match="'n'"):
            i.validate("n", bad)
    open_ = Param(0.1, float, low=0.0, low_open=True)
    with pytest.raises(RemovalNetError, match="> 0.0"):
        open_.validate("lr", 0.0)
    c = Param("x", str, choices=("x", "y"))
    with pytest.raises(RemovalNetError, match="one of x, y"):
        c.validate("mode", "z")
    assert Param(None, int, nullable=True).validate("l", None) is None
    lst = Param([0.5], list, low=0.0, high=1.0)
    assert lst.validate("g", (0.2, 1)) == [0.2, 1.0]
    for bad in ([], [1.2], "0.5", [0.5, "x"]):
        with pytest.raises(RemovalNetError, match="'g'"):
            lst.validate("g", bad)
    with pytest.raises(RemovalNetError, match="true or false"):
        Param(True, bool).validate("flag", 1)


def test_attack_params_merged_defaults_and_unknown():
    a = _CE()
    assert a.params["iterations"] == 1000 and a.params["batch_size"] == 128 and a.params["lr"] == 0.01
    assert a.params["momentum"] == 0.9 and a.params["weight_decay"] == 1e-4 and a.params["schedule"] == "cosine"
    assert a.params["tmax_factor"] == 1.5 and a.params["checkpoint_every"] == 100 and a.params["scale"] == 1.0
    json.dumps(a.params)
    with pytest.raises(RemovalNetError, match="unknown parameter 'scal'"):
        _CE(scal=2.0)
    with pytest.raises(RemovalNetError, match="'iterations'"):
        _CE(iterations=-1)
    with pytest.raises(RemovalNetError, match="'schedule'"):
        _CE(schedule="step")


def test_registry():
    assert "removalnet" in list_attacks()
    assert attack_class("removalnet").name == "removalnet"
    with pytest.raises(RemovalNetError, match="unknown attack 'nope'"):
        create_attack("nope")
    with pytest.raises(TypeError):
        register_attack(type("NoName", (_CE,), {"name": ""}))
    with pytest.raises(ValueError, match="registered twice"):
        register_attack(type("Clash", (_CE,), {"name": "removalnet"}))


# ---------------------------------------------------------------------------------------------- loop pieces

def test_batch_stream_epochs_seeded_and_preload_equivalent():
    ds = _data(10)
    s1 = BatchStream(ds, 3, torch.Generator().manual_seed(1))
    s2 = BatchStream(ds, 3, torch.Generator().manual_seed(1), preload_bytes=0)   # item by item
    assert s1._x is not None and s2._x is None
    seen = []
    for _ in range(3):                       # one epoch: 3 full batches, the 10th sample dropped
        (x1, y1), (x2, y2) = next(s1), next(s2)
        assert x1.shape == (3, 1, 28, 28) and torch.equal(x1, x2) and torch.equal(y1, y2)
        seen += y1.tolist()
    assert len(set(seen)) == 9 and s1.epoch == 1
    next(s1)
    assert s1.epoch == 2
    s3 = BatchStream(ds, 3, torch.Generator().manual_seed(2))
    assert [next(s3)[1].tolist() for _ in range(3)] != [seen[0:3], seen[3:6], seen[6:9]]
    small = BatchStream(_data(4), 8, torch.Generator().manual_seed(0))
    a, b = next(small)[1], next(small)[1]
    assert sorted(a.tolist()) == sorted(b.tolist()) == [0, 1, 2, 3]


def test_sgd_and_cosine_schedule():
    w = torch.nn.Parameter(torch.zeros(2))
    frozen = torch.nn.Parameter(torch.zeros(2), requires_grad=False)
    opt = make_sgd([w, frozen], lr=0.1, momentum=0.9, weight_decay=1e-4)
    assert len(opt.param_groups[0]["params"]) == 1 and opt.param_groups[0]["momentum"] == 0.9
    assert make_schedule(opt, "constant", 10) is None
    sched = make_schedule(opt, "cosine", 10, 1.5)
    assert sched.T_max == 15
    with pytest.raises(RemovalNetError, match="no trainable"):
        make_sgd([frozen], lr=0.1)


def test_fit_trace_history_callbacks_and_victim_untouched():
    victim = _tiny().train()                          # a victim left in train mode must stay so
    h = weights_hash(victim)
    events = []
    a = _CE(iterations=5, batch_size=8, checkpoint_every=2)
    ds = _data(40)
    s = a(victim, ds, seed=0, eval_set=ds, callbacks=[lambda ev, **kw: events.append((ev, kw["t"]))])
    assert weights_hash(victim) == h and victim.training
    assert not s.training and s is not victim
    assert [r["t"] for r in a.trace] == [1, 2, 3, 4, 5]
    assert all(r["skipped"] is None and math.isfinite(r["loss"]) for r in a.trace)
    t_max = 1.5 * 5
    for r in a.trace:                                 # lr used at step t: cosine with T_max = 1.5 x iterations
        assert r["lr"] == pytest.approx(0.01 * (1 + math.cos(math.pi * (r["t"] - 1) / round(t_max))) / 2)
    assert [hh["t"] for hh in a.history] == [0, 2, 4, 5]
    assert all(0.0 <= hh["accuracy"] <= 1.0 for hh in a.history)
    assert [e for e in events if e[0] == "checkpoint"] == [("checkpoint", t) for t in (0, 2, 4, 5)]
    assert [e[1] for e in events if e[0] == "iteration"] == [1, 2, 3, 4, 5]
    assert weights_hash(s) != h


def test_fit_seeded_bit_identical_and_non_finite_error():
    victim, ds = _tiny(), _data(40)
    runs = [_CE(iterations=3, batch_size=8)(victim, ds, seed=s) for s in (4, 4, 5)]
    assert weights_hash(runs[0]) == weights_hash(runs[1]) != weights_hash(runs[2])
    with pytest.raises(RemovalNetError, match="non-finite"):
        _CE(iterations=3, batch_size=8, scale=float("1e39"))(victim, ds, seed=0)


def test_call_validates_inputs():
    with pytest.raises(RemovalNetError, match="SplitModel"):
        _CE(iterations=1)(torch.nn.Linear(2, 2), _data(4), seed=0)
    with pytest.raises(RemovalNetError, match="empty"):
        _CE(iterations=1)(_tiny(), _data(0), seed=0)
    with pytest.raises(RemovalNetError, match="seed"):
        _CE(iterations=1)(_tiny(), _data(4), seed=-1)


# ---------------------------------------------------------------------------------------------- substitute sets

@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", "train")


def test_substitute_ltd_balanced_excluded_and_victim_labels(digits):
    victim = _tiny().eval()
    true = dataset_labels(digits)
    exclude = np.flatnonzero(true == 3)[:100]           # the verifier's samples: most of class 3
    sub = build_substitute(victim, digits, scenario="ltd", count=200, exclude=exclude, seed=0)
    assert isinstance(sub, SubstituteSet) and len(sub) == 200 and sub.scenario == "ltd"
    assert not set(sub.indices.tolist()) & set(exclude.tolist())
    assert np.bincount(true[sub.indices], minlength=10).tolist() == [20] * 10
    expected = predict_logits(victim, torch.utils.data.Subset(digits, sub.indices.tolist())).argmax(1)
    assert torch.equal(sub.labels, expected)
    x, y = sub[5]
    assert torch.equal(x, digits[int(sub.indices[5])][0]) and y == int(expected[5])
    assert sub.agreement == pytest.approx(float((expected.numpy() == true[sub.indices]).mean()))
    again = build_substitute(victim, digits, scenario="ltd", count=200, exclude=exclude, seed=0)
    other = build_substitute(victim, digits, scenario="ltd", count=200, exclude=exclude, seed=1)
    assert np.array_equal(again.indices, sub.indices) and not np.array_equal(other.indices, sub.indices)
    frac = build_substitute(victim, digits, fraction=0.1, labels="true", seed=0)
    assert len(frac) == round(0.1 * len(digits)) and np.array_equal(frac.labels.numpy(), true[frac.indices])
    assert frac.agreement is None


def test_substitute_lsd_partition_and_source(digits):
    victim = _tiny().eval()
    true = dataset_labels(digits)
    exclude = list(range(0, 300))
    part = build_substitute(victim, digits, scenario="lsd", fraction=0.15, exclude=exclude, seed=0)
    assert part.scenario == "lsd" and abs(len(part) - round(0.15 * len(digits))) <= 10
    assert part.indices.min() >= 300
    counts = np.bincount(true[part.indices], minlength=10)
    pool = np.bincount(true[300:], minlength=10)
    assert np.all(np.abs(counts - pool * len(part) / pool.sum()) <= 1.0)     # natural class proportions
    src = load_dataset("digits", "test")
    other = build_substitute(victim, digits, scenario="lsd", source=src, count=50, seed=0)
    assert other.base is src and len(other) == 50
    assert np.bincount(dataset_labels(src)[other.indices], minlength=10).tolist() == [5] * 10


def test_substitute_errors(digits):
    victim = _tiny()
    with pytest.raises(RemovalNetError, match="exactly one"):
        build_substitute(victim, digits, fraction=0.1, count=10)
    with pytest.raises(RemovalNetError, match="exactly one"):
        build_substitute(victim, digits)
    with pytest.raises(RemovalNetError, match="scenario"):
        build_substitute(victim, digits, scenario="xyz", count=10)
    with pytest.raises(RemovalNetError, match="lsd"):
        build_substitute(victim, digits, scenario="ltd", source="digits", count=10)
    with pytest.raises(RemovalNetError, match="outside"):
        build_substitute(victim, digits, count=10, exclude=[len(digits)])
    with pytest.raises(RemovalNetError, match="available"):
        build_substitute(victim, digits, count=len(digits), exclude=[0])


def test_parameters_added_later_leave_job_ids_unchanged_at_their_defaults():
    """``Param(omit_default=True)``: at its default the parameter is not part of the job id (run folders made
    before it existed resume); set to anything else it is, and the job runs with the defaults filled in."""
    from removalnet.experiment import spec_from_dict
    from removalnet.experiment.plan import plan_jobs
    from removalnet.params import identity_params

    spec = {"a": Param(1, int), "b": Param("none", str, choices=("none", "x"), omit_default=True)}
    assert identity_params(spec, {"a": 1, "b": "none"}) == {"a": 1}
    assert identity_params(spec, {"a": 1, "b": "x"}) == {"a": 1, "b": "x"}

    def attack_jobs(params):
        raw = {"name": "x", "dataset": "digits", "seeds": 1, "victim": {"arch": "vgg_small", "kwargs": {"width": 4}},
               "attacks": [{"name": "removalnet-plus", "scenario": "ltd", "fraction": 0.1, "params": params}],
               "verifiers": {"deepjudge": {}}}
        return [j for j in plan_jobs(spec_from_dict(raw)) if j.kind == "attack"]

    plain, default, on = attack_jobs({}), attack_jobs({"rescale": "none"}), attack_jobs({"rescale": "farthest"})
    assert "rescale" not in plain[0].config["params"] and "rescale_spread" not in plain[0].config["params"]
    assert plain[0].id == default[0].id != on[0].id
    assert on[0].config["params"]["rescale"] == "farthest"
    # the job's parameters rebuild the same attack, defaults filled in
    assert create_attack("removalnet-plus", **plain[0].config["params"]).params == create_attack("removalnet-plus").params
