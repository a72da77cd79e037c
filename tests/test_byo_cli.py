"""The CLI on a user's own model file, plain state dict and image folder / npz data."""
import argparse
import json
import numpy as np
import pytest
import torch
from PIL import Image

from removalnet.cli import main
from helpers import LENET, Payload as _Payload, user_lenet as _user_lenet


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """mymodel.py (LeNet), model.pt (its plain state dict, trained a few steps with plain PyTorch), other.pt (an
    independent one), digits as an image folder (28x28 PNGs, 10 classes) and as an npz."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("user")
    (root / "mymodel.py").write_text(LENET)
    d = load_digits()
    imgs = np.stack([np.asarray(Image.fromarray((im * 255 / 16).astype(np.uint8)).resize((28, 28)))
                     for im in d.images[:200]])
    for i, (im, y) in enumerate(zip(imgs, d.target[:200])):
        split = "test" if i % 4 == 0 else "train"
        (root / "digits" / split / str(y)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(root / "digits" / split / str(y) / f"{i}.png")
    np.savez(root / "digits.npz", x=imgs, y=d.target[:200])
    for seed, name in ((0, "model.pt"), (1, "other.pt")):
        net = _user_lenet(root / "mymodel.py", seed=seed).train()
        opt = torch.optim.SGD(net.parameters(), lr=0.05)
        x = torch.from_numpy(imgs[:150]).float().unsqueeze(1) / 255
        y = torch.from_numpy(d.target[:150])
        for _ in range(5):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
        torch.save(net.state_dict(), root / name)
    return root


def _verify_json(capsys, args):
    capsys.readouterr()
    assert main(["verify", *args, "--json", "-q"]) == 0
    return json.loads(capsys.readouterr().out)


# m < 1: the seeds themselves reach k (a few iterations would reach no test case, and DeepJudge's white-box
# metrics would then be degenerate, with no value)
DJ = ["--param", "deepjudge.num_seeds=4", "--param", "deepjudge.max_iters=3", "--param", "deepjudge.max_tests=4",
      "--param", "deepjudge.pgd_steps=1", "--param", "deepjudge.m=0.5"]
MD = ["--param", "modeldiff.num_pairs=6", "--param", "modeldiff.iterations=20"]


def test_verify_plain_state_dict(user, capsys, monkeypatch):
    monkeypatch.chdir(user)
    res = _verify_json(capsys, ["--victim", "model.pt", "--model", "mymodel.py:LeNet", "--data", "folder:digits",
                                "--suspect", "model.pt", "other.pt", "--verifier", "deepjudge", "modeldiff",
                                *DJ, *MD])
    assert res["data"] == "folder:digits:test" and res["data_size"] == 50
    same, other = res["suspects"]
    assert abs(same["metrics"]["DJ-LOD"]["value"]) < 1e-6 and abs(same["metrics"]["DJ-NOD"]["value"]) < 1e-6
    assert same["metrics"]["MD-DDV"]["value"] == pytest.approx(1.0, abs=1e-5)
    assert other["metrics"]["DJ-LOD"]["value"] > 1e-3                       # a different model is measured as such
    assert other["metrics"]["MD-DDV"]["value"] < 0.999


def test_train_attack_verify_on_a_user_model(user, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(user)
    data = "npz:digits.npz"
    assert main(["train", "--model", "mymodel.py:LeNet", "--data", data, "--iterations", "3", "--batch-size", "16",
                 "--out", str(tmp_path / "v"), "-q"]) == 0
    side = json.loads((tmp_path / "v" / "model.json").read_text())
    assert side["arch"] == f"{(user / 'mymodel.py').resolve()}:LeNet" and side["num_blocks"] == 2
    # fine-tune from the user's weights: the user's state dict is the start
    assert main(["train", "--model", "mymodel.py:LeNet", "--weights", "model.pt", "--data", data, "--iterations",
                 "1", "--lr", "1e-12", "--momentum", "0", "--weight-decay", "0", "--out", str(tmp_path / "ft"), "-q"]) == 0
    from removalnet.checkpoint import load_checkpoint
    ft, _ = load_checkpoint(tmp_path / "ft" / "model.safetensors")
    start = torch.load(user / "model.pt", weights_only=True)
    for k, v in ft.source_state_dict().items():
        torch.testing.assert_close(v, start[k])
    # attack the user's plain state dict directly
    assert main(["attack", "ft", "--victim", "model.pt", "--model", "mymodel.py:LeNet", "--data", "folder:digits",
                 "--count", "30", "--iterations", "2", "--no-checkpoints", "--out", str(tmp_path / "a"), "-q"]) == 0
    sur = tmp_path / "a" / "surrogate.safetensors"
    side = json.loads(sur.with_suffix(".json").read_text())
    assert side["victim"] == "model.pt" and side["dataset"] == f"folder:{user / 'digits'}"   # absolute: usable anywhere
    # the plain state dict records no accuracy: the victim's is measured once on the whole test split
    from removalnet.commands._modelref import build_model
    from removalnet.data import get_dataset_info, load_dataset
    from removalnet.train import evaluate
    args = argparse.Namespace(model="mymodel.py:LeNet", split_after=None, normalize=None)
    victim = build_model(args, get_dataset_info("folder:digits"), weights="model.pt")
    assert side["victim_test_accuracy"] == pytest.approx(evaluate(victim, load_dataset("folder:digits", "test")),
                                                         abs=1e-9)
    # every checkpoint rebuilds the user's model from its sidecar (no --model needed)
    res = _verify_json(capsys, ["--victim", str(tmp_path / "v" / "model.safetensors"), "--suspect", str(sur),
                                "--data", data, "--verifier", "modeldiff", *MD])
    assert res["suspects"][0]["metrics"]["MD-DDV"]["value"] is not None


def test_unsplittable_model_skips_white_box_verifiers(user, capsys, monkeypatch):
    monkeypatch.chdir(user)
    import importlib.util
    spec = importlib.util.spec_from_file_location("dyn_user", user / "mymodel.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.save(mod.Dynamic(10).state_dict(), user / "dyn.pt")
    capsys.readouterr()
    assert main(["verify", "--victim", "dyn.pt", "--model", "mymodel.py:Dynamic", "--data", "folder:digits",
                 "--suspect", "dyn.pt", "--verifier", "deepjudge", "modeldiff", *DJ, *MD, "-q"]) == 0
    out, err = capsys.readouterr()
    assert "skipped: deepjudge cannot run:" in out and "white-box" in out and "MD-DDV" in out
    # an untrained model: the accuracy check warns first, then the one line of the skipped verifier
    lines = err.splitlines()
    assert len(lines) == 2 and "is near chance" in lines[0] and lines[1].startswith("warning: deepjudge cannot run")


def test_models_inspect(user, capsys, monkeypatch):
    monkeypatch.chdir(user)
    capsys.readouterr()
    assert main(["models", "--inspect", "mymodel.py:LeNet", "--data", "folder:digits"]) == 0
    out = capsys.readouterr().out
    assert "61,706 parameters" in out and "max_pool2d " in out and "6x14x14" in out and "16x5x5" in out
    assert main(["models", "--inspect", "mymodel.py:LeNet", "--data", "folder:digits", "--split-after",
                 "conv1,conv2,fc1"]) == 0
    assert "3 blocks" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["verify", "--victim", "model.pt", "--suspect", "model.pt", "--data", "folder:digits"],
     "not a removalnet checkpoint: give its architecture with --model"),
    (["verify", "--victim", "model.pt", "--model", "mymodel.py:LeNet", "--suspect", "model.pt"],
     "needs --data"),
    (["verify", "--victim", "model.pt", "--model", "mymodel.py:broken", "--data", "folder:digits",
      "--suspect", "model.pt"], "raised ValueError when called as broken(num_classes=10): no GPU here"),
    (["verify", "--victim", "model.pt", "--weights", "other.pt", "--model", "mymodel.py:LeNet",
      "--data", "folder:digits", "--suspect", "model.pt"], "name different files"),
    (["attack", "ft", "--victim", "model.pt", "--model", "mymodel.py:LeNet", "--data", "folder:nowhere",
      "--out", "OUT"], "is not a directory"),
    (["train", "--model", "mymodel.py:LeNet", "--weights", "other.pt", "--data", "folder:digits", "--split-after",
      "conv1,nope", "--out", "OUT"], "no submodule or fx node"),
])
def test_bad_input_one_line(user, capsys, monkeypatch, tmp_path, args, message):
    monkeypatch.chdir(user)
    capsys.readouterr()
    args = [str(tmp_path / "o") if a == "OUT" else a for a in args]
    assert main(args + ["-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "o").exists()


def test_malicious_pickle_weights_exit_2(user, tmp_path, capsys):
    target = tmp_path / "pwned.txt"
    torch.save({"conv1.weight": _Payload(target)}, tmp_path / "evil.pt")
    capsys.readouterr()
    assert main(["verify", "--victim", str(tmp_path / "evil.pt"), "--model", str(user / "mymodel.py") + ":LeNet",
                 "--data", f"folder:{user / 'digits'}", "--suspect", str(user / "model.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: refusing to load") and err.count("\n") == 1
    assert not target.exists()


def test_verify_shows_its_progress_unless_quiet(user, capsys, monkeypatch):
    monkeypatch.chdir(user)
    base = ["verify", "--victim", "model.pt", "--model", "mymodel.py:LeNet", "--data", "folder:digits",
            "--suspect", "model.pt", "model.pt", "--references", "model.pt", "--verifier", "modeldiff", *MD]
    capsys.readouterr()
    assert main(base) == 0
    err = capsys.readouterr().err
    # one bar: the fingerprint, then the reference and the two suspects scored (4 steps), naming what runs
    assert "verify:" in err and "4/4" in err and "scoring suspect model.pt" in err
    assert main(base + ["-q"]) == 0
    assert "verify:" not in capsys.readouterr().err
