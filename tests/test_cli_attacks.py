"""Every registered attack through ``removalnet attack`` at a tiny size (digits, a few iterations): the CLI
takes the same path as the experiment's attack jobs (``attacks.run_attack``), so the same files come out."""
import csv
import math

import pytest
import torch

from removalnet import create_model
from removalnet.attacks import list_attacks
from removalnet.checkpoint import load_checkpoint, save_checkpoint
from removalnet.cli import main
from removalnet.data import load_dataset
from removalnet.train import TrainConfig, evaluate, train_model

#: what keeps each attack tiny beyond the shared options (knockoff: its learning curve every iteration)
TINY = {"knockoff": ["--param", "eval_every=1"]}


@pytest.fixture(scope="module")
def victim_ckpt(tmp_path_factory):
    train = load_dataset("digits", "train")
    torch.manual_seed(0)
    victim = create_model("vgg_small", 10, 1, 28, width=4)
    train_model(victim, train, None, TrainConfig(iterations=30, batch_size=64, lr=0.05), seed=0, progress=False)
    path = tmp_path_factory.mktemp("victim") / "victim.safetensors"
    save_checkpoint(path, victim.eval(), {"role": "victim", "dataset": "digits"})
    return path


@pytest.mark.parametrize("name", list_attacks())
def test_every_attack_through_the_cli(name, victim_ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["attack", name, "--victim", str(victim_ckpt), "--data", "digits", "--count", "60",
               "--iterations", "2", "--param", "checkpoint_every=1", "--param", "batch_size=16", "--seed", "0",
               "--out", str(out), "-q", *TINY.get(name, [])])
    assert rc == 0, capsys.readouterr().err
    model, meta = load_checkpoint(out / "surrogate.safetensors")
    assert meta["attack"] == name and meta["substitute_size"] == 60
    # the sidecar's accuracy is the returned surrogate's, measured on the test split
    assert meta["test_accuracy"] == pytest.approx(evaluate(model, load_dataset("digits", "test")), abs=1e-12)
    with open(out / "trace.csv") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames[0] == "t" and 1 <= len(rows) <= 2
    assert all(math.isfinite(float(r["loss"])) for r in rows if r.get("loss"))
    assert (out / "checkpoints" / "t0000.safetensors").exists()


def test_attack_list_comes_from_the_registry(capsys):
    with pytest.raises(SystemExit) as e:
        main(["attack", "--list"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for name in list_attacks():
        assert f"\n{name}: " in f"\n{text}"
    assert "    iterations: int in [0, inf], default 1000" in text
