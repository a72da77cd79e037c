"""benchmarks/verify_cost.py: the pass counter against hand counts (not the timings)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from removalnet.models import create_model
from removalnet.verify.deepjudge import channel_means

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture()
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    spec = importlib.util.spec_from_file_location("verify_cost_bench", BENCH / "verify_cost.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def tiny(seed: int = 0):
    torch.manual_seed(seed)
    model = create_model("vgg_small", 10, 1, 28, width=4).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def test_counts_forward_head_and_backward_images(bench):
    model, other = tiny(0), tiny(1)
    x = torch.rand(7, 1, 28, 28)
    with bench.PassCounter(model, other) as pc:
        with torch.inference_mode():
            model(x)                                 # 7 forward
            other(x[:5])                             # 5 forward (counts are summed over the models)
        xr = x[:3].clone().requires_grad_(True)
        torch.autograd.grad(model(xr).sum(), xr)     # 3 forward, 3 backward
        xh = x[:4].clone().requires_grad_(True)
        a = channel_means(model.head(xh, 2))         # 4 forward to block 2, 4 backward through it
        torch.autograd.grad(a.sum(), xh)
        with torch.inference_mode():
            model.head(x[:6], 1)                     # 6 forward to block 1
    counts = pc.snapshot()
    assert counts == {"full": {"forward": 15, "backward": 3}, "head1": {"forward": 6, "backward": 0},
                      "head2": {"forward": 4, "backward": 4}}
    assert bench.totals(counts) == (25, 7)
    # the counter leaves the models as they were: no hook, the class's own head
    assert "head" not in vars(model) and not model._forward_hooks
    with torch.inference_mode():
        model(x)
    assert pc.snapshot() == counts


def test_bound_charges_backpropagated_images_once(bench):
    rates = {("full", False): {"s_per_image": 1.0}, ("full", True): {"s_per_image": 3.0},
             ("head2", False): {"s_per_image": 0.5}, ("head2", True): {"s_per_image": 2.0}}
    counts = {"full": {"forward": 15, "backward": 3}, "head2": {"forward": 4, "backward": 4}}
    # 12 forward-only images x 1 s + 3 back-propagated x 3 s + 4 back-propagated to block 2 x 2 s
    assert bench.bound_seconds(counts, rates) == pytest.approx(29.0)
