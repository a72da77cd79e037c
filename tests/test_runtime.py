"""Runtime options for GPU runs (experiment/runtime.py): validated, off by default (job ids and CPU results
unchanged), bf16 autocast and channels-last applied to training and attack jobs only."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from removalnet import create_model
from removalnet.experiment import load_spec
from removalnet.experiment.plan import plan_jobs
from removalnet.experiment.runtime import check_runtime, job_runtime, loader_options
from removalnet.train import TrainConfig, train_model
from removalnet.utils import RemovalNetError

CIFAR = Path(__file__).resolve().parents[1] / "configs" / "paper" / "cifar10-vgg19_bn.yaml"


def test_check_runtime_validates_and_keeps_non_defaults():
    assert check_runtime(None) == {} and check_runtime({"precision": "float32", "num_workers": 0}) == {}
    assert check_runtime({"precision": "bf16", "channels_last": True, "num_workers": 4}) == \
        {"precision": "bf16", "channels_last": True, "num_workers": 4}
    for bad, msg in (({"precision": "fp16"}, "fp16 needs loss scaling"), ({"precision": "int8"}, "must be one of"),
                     ({"num_workers": -1}, "integer >= 0"), ({"amp": True}, "unknown key"),
                     ({"channels_last": "yes"}, "true or false"), ([1], "must be a mapping")):
        with pytest.raises(RemovalNetError, match=msg):
            check_runtime(bad)


def test_runtime_only_in_job_configs_when_set():
    real = plan_jobs(load_spec(CIFAR))
    assert not any("runtime" in j.config for j in real)
    fast = plan_jobs(load_spec(CIFAR, {"runtime": {"precision": "bf16", "channels_last": False}}))
    assert all(j.config["runtime"] == {"precision": "bf16"} for j in fast)
    with pytest.raises(RemovalNetError, match="spec: runtime.precision"):
        load_spec(CIFAR, {"runtime": {"precision": "fp16"}})


def test_loader_options():
    assert loader_options(None, "cuda") == {"num_workers": 0, "pin_memory": False, "persistent_workers": False}
    assert loader_options({"num_workers": 2}, "cuda:0")["pin_memory"] is True
    assert loader_options({"num_workers": 2}, "cpu")["pin_memory"] is False


def test_job_runtime_bf16_channels_last_and_restores_cudnn():
    conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    x = torch.rand(2, 3, 8, 8)
    conv(x)
    before = torch.backends.cudnn.benchmark
    with job_runtime({"device": "cpu"}, conv):  # no runtime: nothing changes
        assert conv(x).dtype == torch.float32
        assert conv[0].weight.is_contiguous()
    cfg = {"device": "cpu", "runtime": {"precision": "bf16", "channels_last": True, "cudnn_benchmark": True}}
    with job_runtime(cfg, conv):
        assert torch.backends.cudnn.benchmark is True
        assert conv(x).dtype == torch.bfloat16
        assert conv[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.backends.cudnn.benchmark is before
    assert conv(x).dtype == torch.float32


def test_training_under_bf16_runs_and_default_is_unchanged():
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.rand(32, 1, 28, 28, generator=g), torch.randint(0, 10, (32,), generator=g))
    cfg = TrainConfig(iterations=3, batch_size=8, lr=0.05)

    def trained(runtime):
        torch.manual_seed(0)
        m = create_model("vgg_small", 10, 1, 28, width=4)
        with job_runtime({"device": "cpu", "runtime": runtime}, m):
            hist = train_model(m, data, None, cfg, seed=0, progress=False, loader=loader_options(runtime, "cpu"))
        return m, hist

    a, _ = trained({})
    b, _ = trained({"num_workers": 0})  # a default value: the same run
    c, hc = trained({"precision": "bf16"})
    for (k, va), vb, vc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(va, vb), k
        assert vc.dtype == va.dtype  # weights stay float32 under autocast
    assert all(torch.isfinite(torch.tensor(hc["train_loss"])))
    assert any(not torch.equal(va, vc) for va, vc in zip(a.state_dict().values(), c.state_dict().values()))
