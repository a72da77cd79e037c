"""Specs around a user's own model and data: a victim given as a module file + plain state dict, reference
models given as weight files or fine-tuned from a start, folder data, and sizes the data cannot serve."""
import numpy as np
import pytest
import torch
from PIL import Image

from removalnet import RemovalNetError
from removalnet.checkpoint import load_checkpoint
from removalnet.experiment import plan_jobs, run_experiment, spec_from_dict
from removalnet.experiment.artifacts import model_path
from removalnet.experiment.store import ResultStore
from helpers import LENET, user_lenet


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """mymodel.py (LeNet), model.pt / ref0.pt / ref1.pt (plain state dicts of independently seeded LeNets) and
    digits as an image folder (28x28 PNGs)."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("byo_spec")
    (root / "mymodel.py").write_text(LENET)
    d = load_digits()
    n = 300
    imgs = np.stack([np.asarray(Image.fromarray((im * 255 / 16).astype(np.uint8)).resize((28, 28)))
                     for im in d.images[:n]])
    for i, (im, y) in enumerate(zip(imgs, d.target[:n])):
        split = "test" if i % 3 == 0 else "train"
        (root / "digits" / split / str(y)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(root / "digits" / split / str(y) / f"{i}.png")
    for seed, name in ((0, "model.pt"), (1, "ref0.pt"), (2, "ref1.pt")):
        torch.save(user_lenet(root / "mymodel.py", seed=seed).state_dict(), root / name)
    return root


def _raw(root, **over):
    d = {"name": "byo", "dataset": f"folder:{root / 'digits'}", "seeds": [0],
         "victim": {"model": f"{root / 'mymodel.py'}:LeNet", "weights": str(root / "model.pt")},
         "references": {"checkpoints": [str(root / "ref0.pt"), str(root / "ref1.pt")]},
         "negatives": {"count": 0},
         "verifier_count": 20,
         "attacks": [{"name": "ft", "label": "FT", "params": {"ratio": 0.5, "iterations": 2, "batch_size": 8},
                      "scenario": "ltd", "fraction": 0.1}],
         "verifiers": {"sac": {"num_samples": 8}}}
    d.update(over)
    return d


def _state(path):
    return torch.load(path, weights_only=True)


def test_user_victim_and_given_references_run_without_training(user, tmp_path):
    spec = spec_from_dict(_raw(user))
    assert spec.references.count == 2
    jobs = {j.name: j for j in plan_jobs(spec)}
    assert jobs["models/victim"].config["weights"] == str(user / "model.pt")
    s = run_experiment(spec, tmp_path / "run", progress=False)
    assert s.ok, s.failed
    for job, src in (("models/victim", "model.pt"), ("models/reference-0", "ref0.pt"), ("models/reference-1", "ref1.pt")):
        model, meta = load_checkpoint(model_path(tmp_path / "run", job))
        assert meta["imported"] == str(user / src)
        want = _state(user / src)
        got = model.source_state_dict()           # the user's own tensor names, the user's values
        assert set(got) == set(want)
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=0, atol=0)
    with ResultStore(tmp_path / "run" / "results.db") as st:
        rows = {r["name"]: r for r in st.rows()}
    assert "iterations" not in rows["models/victim"]["metrics"]       # imported, never trained
    # the substitute set is 10% of the victim's training set (200 images)
    assert rows["attacks/ft/seed-0"]["metrics"]["substitute_size"] == 20


def test_a_changed_weights_file_is_a_new_victim_job(user, tmp_path):
    a = {j.name: j.id for j in plan_jobs(spec_from_dict(_raw(user)))}
    other = tmp_path / "model.pt"
    torch.save(user_lenet(user / "mymodel.py", seed=5).state_dict(), other)
    raw = _raw(user)
    raw["victim"]["weights"] = str(other)
    b = {j.name: j.id for j in plan_jobs(spec_from_dict(raw))}
    assert a["models/victim"] != b["models/victim"] and a["models/reference-0"] == b["models/reference-0"]


def test_references_fine_tuned_from_a_weights_file(user, tmp_path):
    """init: FILE starts every reference from those weights (lr ~0: they stay there), not from scratch."""
    raw = _raw(user, references={"count": 1, "init": str(user / "ref0.pt"),
                                 "train": {"iterations": 1, "batch_size": 8, "lr": 1e-12, "momentum": 0.0,
                                           "weight_decay": 0.0}})
    spec = spec_from_dict(raw)
    s = run_experiment(spec, tmp_path / "run", progress=False, max_jobs=2)
    ref, _ = load_checkpoint(model_path(tmp_path / "run", "models/reference-0"))
    want = _state(user / "ref0.pt")
    for k, v in ref.source_state_dict().items():
        torch.testing.assert_close(v, want[k], rtol=0, atol=1e-9)
    assert s.ran == 2


def test_fraction_of_another_source_is_of_the_victims_training_set(user, tmp_path):
    """A named S_LSD source: fraction 0.1 means 10% of the victim's 200 training images (20), not 10% of digits."""
    raw = _raw(user, attacks=[{"name": "ft", "label": "FT", "params": {"ratio": 0.5, "iterations": 1, "batch_size": 8},
                               "scenario": "lsd", "source": "digits", "fraction": 0.1, "labels": "victim"}])
    s = run_experiment(spec_from_dict(raw), tmp_path / "run", progress=False, max_jobs=4)
    with ResultStore(tmp_path / "run" / "results.db") as st:
        rows = {r["name"]: r for r in st.rows()}
    assert s.ran == 4 and rows["attacks/ft/seed-0"]["metrics"]["substitute_size"] == 20


@pytest.mark.parametrize("over, fragment", [
    ({"verifier_count": 500}, "spec: verifier_count: 500 samples"),
    ({"attacks": [{"name": "ft", "count": 180}]}, "spec: attacks[0].count: 180 samples"),
    ({"attacks": [{"name": "ft", "count": 500}]}, "spec: attacks[0].count: the substitute set needs 500"),
    ({"attacks": [{"name": "ft", "scenario": "lsd", "source": "digits", "fraction": 1.0}]}, None),
    ({"attacks": [{"name": "ft", "count": 10, "eval_count": 400}]}, "spec: attacks[0].eval_count"),
])
def test_sizes_the_data_cannot_serve_are_refused_before_any_job(user, tmp_path, capsys, over, fragment):
    from removalnet.cli import main
    import yaml
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(_raw(user, **over)))
    code = main(["run", str(path), "--dry-run", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    if fragment is None:   # 1.0 x 200 = 200 samples of digits' 1437: servable
        assert code == 0
        return
    assert code == 2 and fragment in err and len([l for l in err.splitlines() if l.startswith("error:")]) == 1
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "-q"]) == 2
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("over, fragment", [
    ({"victim": {"model": "nope.py:LeNet"}}, "victim.model"),
    ({"victim": {"model": "LeNetX"}}, "victim.model"),
    ({"victim": {"arch": "vgg_small", "weights": "pretrained"}}, "victim.weights"),
    ({"victim": {"arch": "vgg_small", "weights": "missing.pt"}}, "victim.weights"),
    ({"references": {"checkpoints": []}}, "references.checkpoints"),
    ({"references": {"checkpoints": ["missing.pt"]}}, "references.checkpoints[0]"),
    ({"references": {"checkpoints": ["x.pt"], "init": "timm:resnet18"}}, "references.checkpoints"),
    ({"victim": {"arch": "vgg_small", "normalize": "zscore"}}, "victim.normalize"),
    ({"dataset": "folder:/no/such/folder"}, "dataset"),
])
def test_spec_errors_of_the_new_keys_name_the_key(user, over, fragment):
    with pytest.raises(RemovalNetError, match="spec: " + fragment.replace("[", r"\[").replace("]", r"\]")):
        spec_from_dict(_raw(user, **over))


TRAIN_FN = '''
import torch

def train(model, train_set, test_set, seed):
    """The user's own trainer: a few plain SGD steps; records what it was given."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    idx = torch.randperm(len(train_set), generator=g)[:32].tolist()
    x = torch.stack([train_set[i][0] for i in idx])
    y = torch.tensor([int(train_set[i][1]) for i in idx])
    model.train()
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.seen = (len(train_set), len(test_set), seed)

def wrong(model, train_set, test_set, seed):
    return "a model"
'''


def test_references_trained_by_the_users_own_function(user, tmp_path):
    (tmp_path / "mytrain.py").write_text(TRAIN_FN)
    raw = _raw(user, references={"count": 1, "train_fn": f"{tmp_path / 'mytrain.py'}:train"})
    spec = spec_from_dict(raw)
    jobs = {j.name: j for j in plan_jobs(spec)}
    assert jobs["models/reference-0"].config["train_fn"].endswith("mytrain.py:train")
    assert "train_fn" not in jobs["models/victim"].config
    s = run_experiment(spec, tmp_path / "run", progress=False, max_jobs=2)
    assert s.ran == 2 and not s.failed
    with ResultStore(tmp_path / "run" / "results.db") as st:
        rows = {r["name"]: r for r in st.rows()}
    ref = rows["models/reference-0"]["metrics"]
    assert ref["train_fn"].endswith("mytrain.py:train") and "iterations" not in ref
    # the function really trained it: replaying it on the same fresh model gives the same weights
    from removalnet.attacks.independent import build_from_config
    from removalnet.data import get_dataset_info, load_dataset
    from removalnet.experiment.jobs import load_factory
    from removalnet.utils import seed_everything
    info = get_dataset_info(spec.dataset)
    seed_everything(1000)
    fresh = build_from_config(dict(arch=spec.victim.arch, num_classes=10, in_chans=1, input_size=28,
                                   mean=list(info.mean), std=list(info.std), kwargs={}))
    load_factory(f"{tmp_path / 'mytrain.py'}:train")(fresh, load_dataset(spec.dataset, "train"),
                                                       load_dataset(spec.dataset, "test"), seed=1000)
    got, _ = load_checkpoint(model_path(tmp_path / "run", "models/reference-0"))
    for k, v in fresh.state_dict().items():
        torch.testing.assert_close(got.state_dict()[k], v)
    bad = spec_from_dict(_raw(user, references={"count": 1, "train_fn": f"{tmp_path / 'mytrain.py'}:wrong"}))
    s = run_experiment(bad, tmp_path / "bad", progress=False, max_jobs=2)
    assert s.failed == ["models/reference-0"]
    with pytest.raises(RemovalNetError, match="spec: references.train_fn"):
        spec_from_dict(_raw(user, references={"count": 1, "train_fn": f"{tmp_path / 'mytrain.py'}:nope"}))
