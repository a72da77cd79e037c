"""benchmarks/gpu_table1.py and benchmarks/arch_speed.py: checked on a CPU (the GPU run itself is the
coordinator's, on a GPU machine)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import yaml

from paper_fixtures import accept_tiny_files, write_fashion_mnist

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_gpu_table1_without_cifar_says_so_and_stops(tmp_path, capsys):
    rc = _module("gpu_table1").main(["--data-root", str(tmp_path), "--device", "cpu", "--runs", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "error: the real CIFAR-10" in err and "cifar-10-batches-py" in err
    assert list(tmp_path.iterdir()) == []


def test_gpu_table1_without_fashion_mnist_says_so_and_stops(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("REMOVALNET_FASHION_MNIST_DIR", str(tmp_path / "absent"))
    rc = _module("gpu_table1").main(["--dataset", "fashion-mnist", "--device", "cpu", "--runs", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "error: Fashion-MNIST's IDX files" in err and str(tmp_path / "absent") in err
    assert "REMOVALNET_FASHION_MNIST_DIR" in err and list(tmp_path.iterdir()) == []


def test_gpu_table1_fashion_spec_is_the_paper_grid_on_a_partition():
    from removalnet.experiment import load_spec, plan_jobs

    mod = _module("gpu_table1")
    cifar = load_spec(mod.SPEC)
    spec = load_spec(mod.SPEC, mod.fashion_overrides(yaml.safe_load(mod.SPEC.read_text()), ""))
    assert spec.dataset == "fashion-mnist?size=32&channels=3" and spec.lsd_holdout == pytest.approx(0.1)
    lsd = [a for a in spec.attacks if a.scenario == "lsd"]
    assert [a.label for a in lsd] == ["Ours(S_LSD)"] and lsd[0].source == "partition"
    assert lsd[0].fraction == pytest.approx(0.1)
    same = ("name", "label", "params", "scenario", "fraction")
    assert [[getattr(a, k) for k in same] for a in spec.attacks] == [[getattr(a, k) for k in same]
                                                                   for a in cifar.attacks]
    assert spec.victim.arch == "vgg19_bn" and spec.verifiers == cifar.verifiers
    assert [j.config["dataset"] for j in plan_jobs(spec)][:1] == ["fashion-mnist?size=32&channels=3"]


@pytest.mark.paper
def test_gpu_table1_smoke_on_cpu(paper_data_root, monkeypatch, tmp_path, capsys):
    accept_tiny_files(monkeypatch)
    out = tmp_path / "gpu.md"
    rc = _module("gpu_table1").main(["--data-root", str(paper_data_root), "--device", "cpu", "--smoke",
                                     "--runs", str(tmp_path / "runs"), "--out", str(out)])
    assert rc == 0, capsys.readouterr().err[-2000:]
    text = out.read_text()
    assert (tmp_path / "runs" / "cifar10-vgg19_bn-gpu-s3-smoke" / "results.db").is_file()
    for kind in ("train", "attack", "fingerprint", "score"):
        assert f"| {kind} |" in text
    assert "| models/victim | train | done |" in text and "| Ours(S_LSD) |" in text and "| Negative |" in text


def test_arch_speed_rows():
    rows = _module("arch_speed").paper_rows()
    assert {(a, s) for a, _, _, s in rows} == {("vgg19_bn", 32), ("inception_v3", 32), ("resnet50", 32),
                                               ("densenet121", 32), ("timm:vit_base_patch32_224.augreg_in21k_ft_in1k", 224),
                                               ("inception_v3", 299)}


@pytest.mark.paper
def test_arch_speed_one_small_measurement(tmp_path):
    mod = _module("arch_speed")
    out = tmp_path / "speed.md"
    assert mod.main(["--archs", "vgg19_bn", "--threads", "1", "--batch", "2", "--steps", "1", "--warmup", "0",
                     "--out", str(out)]) == 0
    text = out.read_text()
    row = [l for l in text.splitlines() if l.startswith("| vgg19_bn |")]
    assert len(row) == 1 and all(float(c) > 0 for c in row[0].strip("|").split("|")[4:6])
    assert "commit" in text and "machine" in text


@pytest.mark.paper
def test_gpu_table1_fashion_mnist_smoke_on_cpu(monkeypatch, tmp_path, capsys):
    fm = write_fashion_mnist(tmp_path / "repo" / "data" / "fashion-mnist")
    monkeypatch.setenv("REMOVALNET_FASHION_MNIST_DIR", str(fm))
    out = tmp_path / "gpu.md"
    rc = _module("gpu_table1").main(["--dataset", "fashion-mnist", "--device", "cpu", "--smoke", "--epochs", "1",
                                     "--runs", str(tmp_path / "runs"), "--out", str(out)])
    assert rc == 0, capsys.readouterr().err[-2000:]
    text = out.read_text()
    assert (tmp_path / "runs" / "fashion-mnist-vgg19_bn-gpu-s3-e1-smoke" / "results.db").is_file()
    assert "Fashion-MNIST (3-channel 32 px)/VGG19" in text and "partition of the training set" in text
    for kind in ("train", "attack", "fingerprint", "score"):
        assert f"| {kind} |" in text
    assert "| models/victim | train | done |" in text and "| Ours(S_LSD) |" in text and "| Negative |" in text
