"""Bad input, as a hostile user would give it, against train, attack, verify, run and report.

A table of cases (command line, expected exit status, fragment of the expected message), each run in-process
through ``removalnet.cli.main`` in a folder of its own: every refusal is exactly one ``error: ...`` line on
stderr (warnings aside) with exit status 2, and leaves nothing in the case's folder (its output place).
Then: every registered attack through the CLI, the warnings of legitimate mismatches, a grid killed with
SIGKILL mid-job that resumes to the same database as an uninterrupted run, and the run-folder lock.
"""
from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from removalnet import RemovalNetError, create_model
from removalnet.attacks import list_attacks
from removalnet.checkpoint import save_checkpoint, sidecar_path
from removalnet.cli import main
from removalnet.experiment.store import ResultStore
from removalnet.guards import RunLock
from helpers import LENET, user_lenet

from helpers import LENET, user_lenet

SRC = str(Path(__file__).resolve().parents[1] / "src")
MARKER = "pwned-by-pickle"


class _Evil:
    """A pickle payload: unpickling it would create the marker file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _model(seed=0, num_classes=10, in_chans=1, size=28, nan=False):
    torch.manual_seed(seed)
    m = create_model("vgg_small", num_classes, in_chans, size, mean=[0.5] * in_chans, std=[0.3] * in_chans, width=4)
    if nan:
        with torch.no_grad():
            m.blocks[1][0].weight[0, 0, 0, 0] = float("nan")  # one NaN weight
    return m.eval()


def _spec(name="tiny", **over):
    d = {"name": name, "dataset": "digits", "seeds": [0, 1],
         "victim": {"arch": "vgg_small", "kwargs": {"width": 4},
                    "train": {"iterations": 6, "batch_size": 32, "lr": 0.05}},
         "references": {"count": 1}, "negatives": {"count": 0}, "verifier_count": 20,
         "attacks": [{"name": "ft", "label": "FT", "params": {"iterations": 2, "batch_size": 16}, "count": 40}],
         "verifiers": {"sac": {"num_samples": 8}}}
    d.update(over)
    return d


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Checkpoints (good, mismatched, NaN, corrupt, mislabelled), specs and other inputs, written once."""
    d = tmp_path_factory.mktemp("inputs")
    meta = {"dataset": "digits", "role": "trained", "test_accuracy": 0.1}
    f = {"dir": d}
    f["victim"] = save_checkpoint(d / "victim.safetensors", _model(0), meta)
    f["suspect"] = save_checkpoint(d / "suspect.safetensors", _model(1), meta)
    f["rgb32"] = save_checkpoint(d / "rgb32.safetensors", _model(2, in_chans=3, size=32), {**meta, "dataset": "cifar10"})
    f["classes2"] = save_checkpoint(d / "classes2.safetensors", _model(3, num_classes=2), meta)
    f["nan"] = save_checkpoint(d / "nan.safetensors", _model(4, nan=True), meta)
    f["no_classes"] = save_checkpoint(d / "no_classes.safetensors", _model(5), meta)
    side = json.loads(sidecar_path(f["no_classes"]).read_text())
    del side["build_config"]["num_classes"]
    sidecar_path(f["no_classes"]).write_text(json.dumps(side))
    f["truncated"] = d / "truncated.safetensors"
    f["truncated"].write_bytes(f["victim"].read_bytes()[:300])
    sidecar_path(f["truncated"]).write_text(sidecar_path(f["victim"]).read_text())
    f["mislabelled"] = d / "mislabelled.safetensors"       # the weights of one checkpoint, the sidecar of another
    f["mislabelled"].write_bytes(f["victim"].read_bytes())
    sidecar_path(f["mislabelled"]).write_text(sidecar_path(f["suspect"]).read_text())
    f["no_sidecar"] = d / "no_sidecar.safetensors"
    f["no_sidecar"].write_bytes(f["victim"].read_bytes())
    f["bad_json"] = d / "bad_json.safetensors"
    f["bad_json"].write_bytes(f["victim"].read_bytes())
    sidecar_path(f["bad_json"]).write_text("{not json")
    f["evil"] = d / "evil.pth"
    f["evil"].write_bytes(pickle.dumps({"w": _Evil(str(d / MARKER))}))
    # a user's own model file and its plain state dict; data files: an npz without labels, a folder without splits
    f["mymodel"] = d / "mymodel.py"
    f["mymodel"].write_text(LENET)
    f["lenet"] = d / "lenet.pt"
    torch.save(user_lenet(f["mymodel"]).state_dict(), f["lenet"])
    f["npz_no_y"] = d / "no_y.npz"
    with open(f["npz_no_y"], "wb") as fh:
        np.savez(fh, x=np.zeros((4, 8, 8), dtype=np.uint8))
    f["a_file"] = d / "a_file"
    f["a_file"].write_text("not a folder")
    # a user's own model file, plain state dicts (good, a key missing, a key extra), image folders
    (d / "mymodel.py").write_text(LENET)
    f["mymodel"] = d / "mymodel.py"
    state = user_lenet(d / "mymodel.py").state_dict()
    torch.save(state, d / "lenet.pt")
    torch.save({k: v for k, v in state.items() if k != "fc3.bias"}, d / "lenet_missing.pt")
    torch.save({**state, "fc4.weight": torch.zeros(2, 2)}, d / "lenet_extra.pt")
    rng = np.random.default_rng(0)
    for folder, classes in (("imgs", tuple("abcdefghij")), ("oneclass", ("a",))):   # 10 classes, as LeNet(10)
        for split in ("train", "test"):
            for c in classes:
                (d / folder / split / c).mkdir(parents=True)
                for i in range(3):
                    Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(d / folder / split / c / f"{i}.png")
    f["empty_dir"] = d / "empty"
    f["empty_dir"].mkdir()
    f["spec"] = d / "tiny.yaml"
    f["spec"].write_text(yaml.safe_dump(_spec()))
    f["spec_wide"] = d / "wide.yaml"
    f["spec_wide"].write_text(yaml.safe_dump(_spec(victim={"arch": "vgg_small", "kwargs": {"width": "wide"}})))
    f["spec_bad_yaml"] = d / "bad.yaml"
    f["spec_bad_yaml"].write_text("name: [unclosed\n")
    f["spec_unknown"] = d / "unknown.yaml"
    f["spec_unknown"].write_text(yaml.safe_dump(_spec(colour="red")))
    f["config_unknown"] = d / "config.yaml"
    f["config_unknown"].write_text("learning-rate: 0.1\n")
    # a place that cannot be written: permission bits do not stop root, /proc does
    f["unwritable"] = Path("/proc/removalnet-nowhere") if os.geteuid() == 0 else d / "readonly"
    if os.geteuid() != 0:
        f["unwritable"].mkdir()
        f["unwritable"].chmod(0o500)
    return f


TRAIN = ["train", "--data", "digits", "--width", "4", "--iterations", "3", "--batch-size", "32", "-q"]
TRAIN_REF = ["train", "--data", "digits", "--iterations", "3", "--batch-size", "32", "-q"]   # with --model REF


def _lenet(f):
    return f"{f['mymodel']}:LeNet"


def _attack(f, name="removalnet", *extra):
    return ["attack", name, "--victim", str(f["victim"]), "--data", "digits", "--count", "40",
            "--iterations", "2", "--param", "batch_size=16", "-q", *extra]


def _verify(f, victim="victim", suspect="suspect", *extra):
    return ["verify", "--victim", str(f[victim]), "--suspect", str(f[suspect]), "--verifier", "sac",
            "--param", "sac.num_samples=8", *extra]


def _verifier_param(name, item):
    """verify with verifier ``name`` added and one of its parameters (``item``: KEY=VALUE)."""
    return lambda f, o: [*_verify(f), "--verifier", name, "--param", f"{name}.{item}", "--fp-cache", o]


# (case id, argv from (files, out), exit status, fragment of the error line); OUT is the case's output place
CASES = [
    # argparse: one line and a pointer to --help
    ("train-seed-abc", lambda f, o: [*TRAIN, "--seed", "abc", "--out", o], 2, "invalid int value: 'abc'"),
    ("unknown-command", lambda f, o: ["bogus"], 2, "invalid choice: 'bogus'"),
    ("train-in-chans-2", lambda f, o: [*TRAIN, "--in-chans", "2", "--out", o], 2, "--in-chans: invalid choice"),
    ("attack-fraction-and-count", lambda f, o: [*_attack(f), "--fraction", "0.1", "--out", o], 2, "not allowed with"),
    ("verify-rule", lambda f, o: [*_verify(f), "--rule", "mean"], 2, "--rule: invalid choice"),
    ("verify-seed-negative", lambda f, o: [*_verify(f), "--seed", "-1"], 2, "--seed"),
    # train
    ("train-width-negative", lambda f, o: [*TRAIN, "--width", "-2", "--out", o], 2, "width=-2"),
    ("train-width-zero", lambda f, o: [*TRAIN, "--width", "0", "--out", o], 2, "width=0"),
    ("train-width-paper-model", lambda f, o: [*TRAIN, "--model", "resnet18", "--out", o], 2,
     "model 'resnet18' has no option 'width'"),
    ("train-unknown-data", lambda f, o: [*TRAIN, "--data", "no-such-data", "--out", o], 2, "no-such-data"),
    ("train-unknown-model", lambda f, o: [*TRAIN, "--model", "nope", "--out", o], 2, "unknown model 'nope'"),
    ("train-epochs-zero", lambda f, o: [*TRAIN, "--epochs", "0", "--iterations", "1", "--out", o], 2, "epochs"),
    ("train-lr-huge", lambda f, o: [*TRAIN, "--lr", "1e30", "--out", o], 2, "non-finite"),
    ("train-out-is-file", lambda f, o: [*TRAIN, "--out", str(f["a_file"])], 2, "exists and is not a directory"),
    ("train-out-under-file", lambda f, o: [*TRAIN, "--out", str(f["a_file"] / "sub")], 2, "is not a directory"),
    ("train-out-unwritable", lambda f, o: [*TRAIN, "--out", str(f["unwritable"] / "out")], 2, "cannot be"),
    ("train-data-root-empty", lambda f, o: ["train", "--data", "fashion-mnist", "--data-root", str(f["empty_dir"]),
                                            "--width", "4", "-q", "--out", o], 2, "not found in"),
    ("threads-zero", lambda f, o: [*TRAIN, "--threads", "0", "--out", o], 2, "--threads must be >= 1"),
    ("config-missing", lambda f, o: [*TRAIN, "--config", str(f["dir"] / "nope.yaml"), "--out", o], 2,
     "does not exist"),
    ("config-unknown-option", lambda f, o: [*TRAIN, "--config", str(f["config_unknown"]), "--out", o], 2,
     "unknown option 'learning-rate'"),
    # train: a user's own model (--model REF, --weights, --split-after, --normalize) and data (folder:, npz:)
    ("train-model-file-missing", lambda f, o: [*TRAIN_REF, "--model", f"{f['dir']}/nope.py:Net", "--out", o], 2,
     "nope.py"),
    ("train-model-factory-missing", lambda f, o: [*TRAIN_REF, "--model", f"{f['mymodel']}:Nope", "--out", o], 2,
     "Nope"),
    ("train-model-torchvision-unknown", lambda f, o: [*TRAIN_REF, "--model", "torchvision:no_such_net", "--out", o],
     2, "no_such_net"),
    ("train-weights-missing", lambda f, o: [*TRAIN_REF, "--model", _lenet(f), "--weights", str(f["dir"] / "nope.pt"),
                                            "--out", o], 2, "nope.pt"),
    ("train-weights-pickle", lambda f, o: [*TRAIN_REF, "--model", _lenet(f), "--weights", str(f["evil"]),
                                           "--out", o], 2, "evil.pth': it is not a plain tensor state dict"),
    ("train-weights-other-model", lambda f, o: [*TRAIN_REF, "--model", _lenet(f), "--weights", str(f["victim"]),
                                                "--out", o], 2, "victim.safetensors' does not match the architecture"),
    ("train-weights-pretrained-not-timm", lambda f, o: [*TRAIN_REF, "--model", _lenet(f), "--weights", "pretrained",
                                                        "--out", o], 2, "only available for timm:NAME"),
    ("train-split-after-unknown", lambda f, o: [*TRAIN_REF, "--model", _lenet(f), "--split-after", "nosuch",
                                                "--out", o], 2, "nosuch"),
    ("train-split-after-empty-name", lambda f, o: [*TRAIN_REF, "--model", _lenet(f), "--split-after", "conv1,,fc1",
                                                   "--out", o], 2, "comma-separated names"),
    ("train-split-after-registered", lambda f, o: [*TRAIN, "--split-after", "conv1", "--out", o], 2,
     "has fixed blocks"),
    ("train-normalize", lambda f, o: [*TRAIN_REF, "--model", _lenet(f), "--normalize", "yes", "--out", o], 2,
     "--normalize: invalid choice"),
    ("train-data-folder-missing", lambda f, o: [*TRAIN, "--data", f"folder:{f['dir']}/nope", "--out", o], 2,
     "is not a directory"),
    ("train-data-folder-no-splits", lambda f, o: [*TRAIN, "--data", f"folder:{f['empty_dir']}", "--out", o], 2,
     "no train/ folder"),
    ("train-data-folder-no-path", lambda f, o: [*TRAIN, "--data", "folder:", "--out", o], 2, "needs a path"),
    ("train-data-npz-missing", lambda f, o: [*TRAIN, "--data", f"npz:{f['dir']}/nope.npz", "--out", o], 2,
     "does not exist"),
    ("train-data-npz-no-labels", lambda f, o: [*TRAIN, "--data", f"npz:{f['npz_no_y']}", "--out", o], 2,
     "must hold arrays 'x' (images) and 'y' (labels)"),
    ("train-data-npz-option", lambda f, o: [*TRAIN, "--data", f"npz:{f['npz_no_y']}?colour=1", "--out", o], 2,
     "unknown option"),
    ("train-data-npz-not-npz", lambda f, o: [*TRAIN, "--data", f"npz:{f['a_file']}", "--out", o], 2,
     "not a readable .npz"),
    # attack
    ("attack-unknown", lambda f, o: [*_attack(f, "nope"), "--out", o], 2, "unknown attack 'nope'"),
    ("attack-unknown-param", lambda f, o: [*_attack(f, "removalnet", "--param", "gamma=1"), "--out", o], 2,
     "unknown parameter 'gamma'"),
    ("attack-param-syntax", lambda f, o: [*_attack(f, "removalnet", "--param", "alpha"), "--out", o], 2, "KEY=VALUE"),
    ("attack-param-range", lambda f, o: [*_attack(f, "removalnet", "--param", "alpha=1.5"), "--out", o], 2, "'alpha'"),
    ("attack-param-layer", lambda f, o: [*_attack(f, "removalnet", "--param", "layer=9"), "--out", o], 2,
     "split layer 9"),
    ("attack-lr-huge", lambda f, o: [*_attack(f, "removalnet", "--param", "lr=1e30"), "--out", o], 2, "non-finite"),
    ("attack-source-without-lsd", lambda f, o: [*_attack(f), "--source", "digits", "--out", o], 2,
     "--source is only used with --scenario lsd"),
    ("attack-exclude-missing", lambda f, o: [*_attack(f), "--exclude", str(f["dir"] / "nope.json"), "--out", o], 2,
     "does not exist"),
    ("attack-victim-missing", lambda f, o: [*_attack(f), "--victim", str(f["dir"] / "nope.safetensors"), "--out", o],
     2, "does not exist"),
    ("attack-victim-truncated", lambda f, o: [*_attack(f), "--victim", str(f["truncated"]), "--out", o], 2,
     "not a readable safetensors file"),
    ("attack-victim-pickle", lambda f, o: [*_attack(f), "--victim", str(f["evil"]), "--out", o], 2,
     "give its architecture"),
    ("attack-data-other-classes", lambda f, o: [*_attack(f), "--data", "celeba", "--out", o], 2,
     "--data 'celeba' cannot be compared with the victim: classes 2 vs 10"),
    ("attack-out-under-file", lambda f, o: [*_attack(f), "--out", str(f["a_file"] / "sub")], 2, "is not a directory"),
    ("attack-out-unwritable", lambda f, o: [*_attack(f), "--out", str(f["unwritable"] / "out")], 2, "cannot be"),
    ("attack-state-dict-without-model", lambda f, o: [*_attack(f, "ft"), "--victim", str(f["lenet"]), "--out", o],
     2, "give its architecture with --model REF"),
    ("attack-state-dict-other-model", lambda f, o: [*_attack(f, "ft"), "--victim", str(f["lenet"]), "--model",
                                                    "vgg_small", "--out", o], 2,
     "lenet.pt' does not match the architecture"),
    ("attack-split-after-unknown", lambda f, o: [*_attack(f, "ft"), "--victim", str(f["lenet"]), "--model", _lenet(f),
                                                 "--split-after", "nosuch", "--out", o], 2, "nosuch"),
    ("attack-victim-and-weights", lambda f, o: [*_attack(f, "ft"), "--weights", str(f["suspect"]), "--out", o], 2,
     "--victim and --weights name different files"),
    ("attack-normalize", lambda f, o: [*_attack(f, "ft"), "--normalize", "0.5", "--out", o], 2,
     "--normalize: invalid choice"),
    ("attack-data-npz-missing", lambda f, o: [*_attack(f, "ft"), "--data", f"npz:{f['dir']}/nope.npz", "--out", o],
     2, "does not exist"),
    # verify (the fingerprint cache is the output place)
    ("verify-sidecar-no-classes", lambda f, o: [*_verify(f, "no_classes"), "--fp-cache", o], 2,
     "build_config lacks 'num_classes'"),
    ("verify-sidecar-missing", lambda f, o: [*_verify(f, "no_sidecar"), "--fp-cache", o], 2, "sidecar"),
    ("verify-sidecar-not-json", lambda f, o: [*_verify(f, "bad_json"), "--fp-cache", o], 2, "not valid JSON"),
    ("verify-mislabelled", lambda f, o: [*_verify(f, "mislabelled"), "--fp-cache", o], 2, "weights hash differs"),
    ("verify-pickle", lambda f, o: [*_verify(f, "victim", "evil"), "--fp-cache", o], 2, "give its architecture"),
    ("verify-channels-size", lambda f, o: [*_verify(f, "victim", "rgb32"), "--fp-cache", o], 2,
     "cannot be compared with the victim: channels 3 vs 1, input size 32 vs 28"),
    ("verify-classes", lambda f, o: [*_verify(f, "victim", "classes2"), "--fp-cache", o], 2, "classes 2 vs 10"),
    ("verify-nan-victim", lambda f, o: [*_verify(f, "nan"), "--fp-cache", o], 2, "the victim ("),
    ("verify-nan-suspect", lambda f, o: [*_verify(f, "victim", "nan"), "--fp-cache", o], 2, "the suspect "),
    ("verify-nan-reference", lambda f, o: [*_verify(f), "--references", str(f["suspect"]), str(f["nan"]),
                                           "--fp-cache", o], 2, "the reference 2 ("),
    ("verify-param-syntax", lambda f, o: [*_verify(f), "--param", "max_iters=3", "--fp-cache", o], 2,
     "VERIFIER.KEY=VALUE"),
    ("verify-param-range", lambda f, o: [*_verify(f), "--param", "sac.num_samples=0", "--fp-cache", o], 2,
     "num_samples"),
    ("verify-unknown-verifier", lambda f, o: [*_verify(f), "--verifier", "nope", "--fp-cache", o], 2,
     "unknown verifier 'nope'"),
    ("verify-unknown-data", lambda f, o: [*_verify(f), "--data", "no-such-dataset", "--fp-cache", o], 2,
     "no-such-dataset"),
    ("verify-victim-and-weights", lambda f, o: [*_verify(f), "--weights", str(f["suspect"]), "--fp-cache", o], 2,
     "--victim and --weights name different files"),
    ("verify-state-dict-without-data", lambda f, o: ["verify", "--victim", str(f["lenet"]), "--model", _lenet(f),
                                                     "--suspect", str(f["lenet"]), "--verifier", "sac",
                                                     "--fp-cache", o], 2, "needs --data"),
    ("verify-state-dict-other-model", lambda f, o: [*_verify(f), "--references", str(f["lenet"]), "--model",
                                                    "vgg_small", "--data", "digits", "--fp-cache", o], 2,
     "lenet.pt' does not match the architecture"),
    ("verify-split-after-unknown", lambda f, o: ["verify", "--victim", str(f["lenet"]), "--model", _lenet(f),
                                                 "--data", "digits", "--split-after", "nosuch", "--suspect",
                                                 str(f["lenet"]), "--verifier", "sac", "--fp-cache", o], 2, "nosuch"),
    ("verify-normalize", lambda f, o: [*_verify(f), "--normalize", "mean", "--fp-cache", o], 2,
     "--normalize: invalid choice"),
    ("verify-data-folder-missing", lambda f, o: [*_verify(f), "--data", f"folder:{f['dir']}/nope", "--fp-cache", o],
     2, "is not a directory"),
    ("verify-rule-k-negative", lambda f, o: [*_verify(f), "--rule", "normal", "--k", "-1", "--fp-cache", o], 2,
     "k=-1"),
    # the verifiers' parameters (ModelDiff's and DeepJudge's added ones among them)
    *[(f"verify-{name}-{item}", _verifier_param(name, item), 2, fragment) for name, item, fragment in [
        ("modeldiff", "iterations=-1", "verifier 'modeldiff': parameter 'iterations' must be >= 0, got -1"),
        ("modeldiff", "epsilon=0", "parameter 'epsilon' must be > 0.0, got 0"),
        ("modeldiff", "ddv=cosine", "parameter 'ddv' must be one of official, all_pairs"),
        ("deepjudge", "adv_method=cw", "verifier 'deepjudge': parameter 'adv_method' must be one of pgd, fgsm, got"),
        ("deepjudge", "k_images=0", "parameter 'k_images' must be >= 1, got 0"),
        ("deepjudge", "k_images=2.5", "parameter 'k_images' must be an integer, got 2.5"),
        ("deepjudge", "lad_reduction=max", "parameter 'lad_reduction' must be one of sum, mean, got 'max'")]],
    # models --inspect
    ("models-inspect-missing-file", lambda f, o: ["models", "--inspect", f"{f['dir']}/nope.py:Net"], 2, "nope.py"),
    ("models-inspect-unknown", lambda f, o: ["models", "--inspect", "nope"], 2, "unknown model 'nope'"),
    ("models-inspect-no-value", lambda f, o: ["models", "--inspect"], 2, "expected one argument"),
    ("models-inspect-split-registered", lambda f, o: ["models", "--inspect", "vgg_small", "--split-after", "a"], 2,
     "--split-after applies to a model reference"),
    ("models-inspect-split-unknown", lambda f, o: ["models", "--inspect", _lenet(f), "--data", "digits",
                                                   "--split-after", "nosuch"], 2, "nosuch"),
    ("models-inspect-wrong-channels", lambda f, o: ["models", "--inspect", _lenet(f)], 2,
     "fails on a 3x32x32 input"),
    ("models-inspect-unknown-data", lambda f, o: ["models", "--inspect", "vgg_small", "--data", "no-such-data"], 2,
     "no-such-data"),
    # --list takes nothing else
    ("verify-list-extra", lambda f, o: ["verify", "--list", "--suspect", str(f["suspect"])], 2,
     "--list takes no other arguments"),
    ("attack-list-extra", lambda f, o: ["attack", "--list", "ft"], 2, "--list takes no other arguments"),
    ("study-list-extra", lambda f, o: ["study", "robustness", "--list"], 2, "--list takes no other arguments"),
    # run
    ("run-out-is-file", lambda f, o: ["run", str(f["spec"]), "-q", "--out", str(f["a_file"])], 2,
     "exists and is not a directory"),
    ("run-out-unwritable", lambda f, o: ["run", str(f["spec"]), "-q", "--out", str(f["unwritable"] / "run")], 2,
     "cannot be"),
    ("run-kwargs-wide", lambda f, o: ["run", str(f["spec_wide"]), "-q", "--out", o], 2,
     "spec: victim.kwargs: model option width='wide'"),
    ("run-kwargs-wide-dry", lambda f, o: ["run", str(f["spec_wide"]), "--dry-run", "--out", o], 2, "victim.kwargs"),
    ("run-spec-missing", lambda f, o: ["run", str(f["dir"] / "nope.yaml"), "--out", o], 2, "does not exist"),
    ("run-spec-bad-yaml", lambda f, o: ["run", str(f["spec_bad_yaml"]), "--out", o], 2, "not valid YAML"),
    ("run-spec-unknown-key", lambda f, o: ["run", str(f["spec_unknown"]), "--out", o], 2, "spec: colour: unknown key"),
    ("run-executor", lambda f, o: ["run", str(f["spec"]), "--executor", "dask", "--out", o], 2,
     "--executor: invalid choice"),
    ("run-seeds-zero", lambda f, o: ["run", str(f["spec"]), "--seeds", "0", "--out", o], 2, "seeds"),
    # report: the threshold rule and its parameters are checked before the run folder is read
    ("report-missing", lambda f, o: ["report", o], 2, ""),
    ("report-k-negative", lambda f, o: ["report", o, "--rule", "normal", "--k", "-1"], 2, "k=-1"),
    ("report-k-zero", lambda f, o: ["report", o, "--rule", "normal", "--k", "0"], 2,
     "k=0.0 must be a finite number > 0"),
    ("report-k-nan", lambda f, o: ["report", o, "--rule", "normal", "--k", "nan"], 2, "k=nan"),
    ("report-k-text", lambda f, o: ["report", o, "--rule", "normal", "--k", "two"], 2, "invalid float value"),
    ("report-q-over", lambda f, o: ["report", o, "--rule", "percentile", "--q", "150"], 2, "q=150"),
    ("report-margin-negative", lambda f, o: ["report", o, "--rule", "percentile", "--margin", "-0.5"], 2,
     "margin=-0.5"),
    ("report-k-for-minmax", lambda f, o: ["report", o, "--rule", "minmax", "--k", "3"], 2,
     "the minmax rule takes no parameter k"),
    ("report-q-for-normal", lambda f, o: ["report", o, "--rule", "normal", "--q", "10"], 2,
     "the normal rule takes no parameter q"),
    ("report-rule", lambda f, o: ["report", o, "--rule", "median"], 2, "--rule: invalid choice"),
    # audit: the user's model, weights and data
    ("audit-factory-raises", lambda f, o: [*_audit(f, "broken"), "--out", o], 2, "raised ValueError"),
    ("audit-missing-keys", lambda f, o: [*_audit(f, weights="lenet_missing.pt"), "--out", o], 2,
     "missing 1 tensor(s), e.g. 'fc3.bias'"),
    ("audit-extra-keys", lambda f, o: [*_audit(f, weights="lenet_extra.pt"), "--out", o], 2,
     "1 unexpected tensor(s), e.g. 'fc4.weight'"),
    ("audit-one-class", lambda f, o: [*_audit(f, data="oneclass"), "--out", o], 2, "1 class(es) found"),
    ("audit-pickle-weights", lambda f, o: [*_audit(f, weights="evil.pth"), "--out", o], 2, "refusing to load"),
    ("audit-weights-missing", lambda f, o: [*_audit(f, weights="nope.pt"), "--out", o], 2, "does not exist"),
    ("audit-one-reference", lambda f, o: [*_audit(f), "--references", str(f["dir"] / "lenet.pt"), "--out", o], 2,
     "at least 2"),
    ("audit-train-references-1", lambda f, o: [*_audit(f), "--train-references", "1", "--out", o], 2, "at least 2"),
    ("audit-reference-missing-keys", lambda f, o: [*_audit(f), "--references", str(f["dir"] / "lenet.pt"),
                                                   str(f["dir"] / "lenet_missing.pt"), "--out", o], 2,
     "--references (file 2): "),
    ("audit-budget", lambda f, o: [*_audit(f), "--budget", "huge", "--out", o], 2, "--budget: invalid choice"),
]


def _audit(f, factory="LeNet", weights="lenet.pt", data="imgs"):
    return ["audit", "--model", f"{f['mymodel']}:{factory}", "--weights", str(f["dir"] / weights),
            "--data", f"folder:{f['dir'] / data}", "-q"]


@pytest.mark.parametrize("case,argv,code,fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input(files, tmp_path, capsys, case, argv, code, fragment):
    out = tmp_path / "out"
    before = {p: p.stat().st_mtime_ns for p in files["dir"].iterdir()}
    with warnings.catch_warnings(record=True) as caught:  # a Python warning would print as more lines
        warnings.simplefilter("always")
        try:
            rc = main(argv(files, str(out)))
        except SystemExit as e:  # argparse
            rc = e.code
    cap = capsys.readouterr()
    assert not [w for w in caught if issubclass(w.category, (UserWarning, RuntimeWarning))], \
        [str(w.message) for w in caught]
    lines = [line for line in cap.err.splitlines() if line.strip() and not line.startswith("warning: ")]
    assert rc == code, (rc, cap.err)
    assert len(lines) == 1 and lines[0].startswith("error: "), cap.err
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in cap.err and cap.out == ""
    if "invalid" in fragment or "not allowed" in fragment:
        assert "--help" in lines[0]
    # nothing left on disk: not in the case's folder, not among the inputs, not from the pickle
    assert list(tmp_path.iterdir()) == []
    assert {p: p.stat().st_mtime_ns for p in files["dir"].iterdir()} == before
    assert not (files["dir"] / MARKER).exists()


# (spec keys replaced, fragment of the error line): each through `removalnet run SPEC --dry-run`
SPEC_CASES = [
    ({"victim": {"arch": "nope"}}, "spec: victim.arch"),
    ({"victim": {"kwargs": {"width": "wide"}}}, "spec: victim.kwargs"),
    ({"victim": {"kwargs": {"depth": 2}}}, "spec: victim.kwargs: model 'vgg_small' has no option 'depth'"),
    ({"victim": {"train": {"lr": -1}}}, "spec: victim.train"),
    ({"attacks": [{"name": "ft", "scenario": "xyz", "count": 5}]}, "spec: attacks[0].scenario"),
    ({"attacks": [{"name": "ft", "params": {"ratio": 3}, "count": 5}]}, "spec: attacks[0].params"),
    ({"attacks": [{"name": "ft", "fraction": 0.1, "count": 5}]}, "spec: attacks[0]: give exactly one"),
    ({"attacks": [{"name": "ft", "scenario": "lsd", "source": "partition", "count": 5}]}, "spec: attacks[0].source"),
    ({"verifiers": {"nope": {}}}, "spec: verifiers.nope"),
    ({"verifiers": {"sac": {"num_samples": 0}}}, "spec: verifiers.sac"),
    ({"negatives": {"count": 3, "seed_offset": 1000}}, "spec: negatives.seed_offset"),
    ({"seeds": [1, 1]}, "spec: seeds"),
    ({"name": "a b"}, "spec: name"),
    ({"dataset": "nope"}, "spec: dataset"),
    ({"threshold_rule": "mean"}, "spec: threshold_rule"),
    ({"threshold_rule": {"name": "normal", "k": 0}}, "spec: threshold_rule: threshold parameter k=0"),
    ({"threshold_rule": {"name": "normal", "kk": 1}}, "spec: threshold_rule: unknown threshold rule key 'kk'"),
    ({"threshold_rule": {"name": "percentile", "q": 101}}, "spec: threshold_rule: threshold parameter q=101"),
    ({"threshold_rule": {"name": "minmax", "margin": 1}}, "spec: threshold_rule: the minmax rule takes no parameter"),
    ({"threshold_rule": {"k": 3}}, "spec: threshold_rule"),
    ({"attacks": [{"name": "ft", "count": 5, "baseline": "yes"}]}, "spec: attacks[0].baseline"),
    ({"attacks": [{"name": "ft", "count": 5, "baseline": 1}]}, "spec: attacks[0].baseline"),
    ({"verifiers": {"modeldiff": {"iterations": -1}}}, "spec: verifiers.modeldiff"),
    ({"verifiers": {"modeldiff": {"ddv": "l2"}}}, "spec: verifiers.modeldiff"),
    ({"verifiers": {"deepjudge": {"adv_method": "cw"}}}, "spec: verifiers.deepjudge"),
    ({"verifiers": {"deepjudge": {"k_images": 0}}}, "spec: verifiers.deepjudge"),
    ({"study": {"name": "nope"}}, "spec: study.name"),
    ({"study": {"name": "robustness", "colour": 1}}, "unknown parameter 'colour'"),
]


@pytest.mark.parametrize("patch,fragment", SPEC_CASES, ids=[c[1] for c in SPEC_CASES])
def test_bad_spec(tmp_path, capsys, patch, fragment):
    d = _spec()
    for k, v in patch.items():
        d[k] = {**d[k], **v} if isinstance(v, dict) and isinstance(d.get(k), dict) and k != "verifiers" else v
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(d))
    assert main(["run", str(spec), "--dry-run", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and fragment in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]


def test_study_of_another_kind_is_refused(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(_spec(study={"name": "boundary"})))
    assert main(["study", "saliency", str(spec), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err == f"error: spec {str(spec)!r} is a 'boundary' study, not 'saliency'\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]


def test_data_root_is_the_only_place_looked_at(files, capsys):
    assert main(["train", "--data", "fashion-mnist", "--data-root", str(files["empty_dir"]), "-q",
                 "--out", str(files["dir"] / "never")]) == 2
    err = capsys.readouterr().err
    assert str(files["empty_dir"]) in err and "/usr/share/datasets" not in err


def test_out_is_checked_before_training(files, monkeypatch, capsys):
    import removalnet.train

    def no_training(*a, **kw):
        raise AssertionError("training ran although the output place cannot be written")

    monkeypatch.setattr(removalnet.train, "train_model", no_training)   # the command imports it when it runs
    assert main([*TRAIN, "--out", str(files["a_file"] / "sub")]) == 2
    assert "error: --out" in capsys.readouterr().err


@pytest.mark.parametrize("name", list_attacks())
def test_every_attack_runs_from_the_cli(files, tmp_path, capsys, name):
    out = tmp_path / "o"
    assert main([*_attack(files, name), "--param", "checkpoint_every=1", "--out", str(out)]) == 0, capsys.readouterr().err
    meta = json.loads((out / "surrogate.json").read_text())
    assert meta["attack"] == name and 0 <= meta["test_accuracy"] <= 1
    umask = os.umask(0)
    os.umask(umask)
    for p in [out / "surrogate.safetensors", out / "surrogate.json", *sorted((out / "checkpoints").iterdir())]:
        assert p.stat().st_mode & 0o777 == 0o666 & ~umask, p      # weights and sidecars follow the umask
    assert (out.stat().st_mode & 0o777) == 0o777 & ~umask


def test_removalnet_plus_permute_only_from_the_cli(files, tmp_path):
    out = tmp_path / "o"
    assert main(["attack", "removalnet-plus", "--victim", str(files["victim"]), "--data", "digits", "--count", "40",
                 "--param", "iterations=0", "--param", "boundary_mix=0", "--param", "holdout=0", "-q",
                 "--out", str(out)]) == 0
    assert json.loads((out / "surrogate.json").read_text())["test_accuracy"] is not None


def test_legitimate_mismatches_warn(files, tmp_path, capsys):
    # an attack's --data other than the victim's dataset: runs, with a warning
    other = save_checkpoint(tmp_path / "fm.safetensors", _model(0), {"dataset": "fashion-mnist"})
    assert main(["attack", "ft", "--victim", str(other), "--data", "digits", "--count", "40", "--iterations", "1",
                 "--param", "batch_size=16", "-q", "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert "warning: --data 'digits' is not the victim's dataset 'fashion-mnist'" in err
    # an S_LSD source is another dataset by design: no warning
    assert main(["attack", "ft", "--victim", str(files["victim"]), "--data", "digits", "--scenario", "lsd",
                 "--source", "fashion-mnist", "--count", "40", "--iterations", "1", "--param", "batch_size=16",
                 "-q", "--out", str(tmp_path / "lsd")]) == 0
    assert "is not the victim's dataset" not in capsys.readouterr().err   # (a near-chance victim is warned of)
    # a suspect of another dataset with the same classes, channels and size: scored, with a warning
    assert main(["verify", "--victim", str(files["victim"]), "--suspect", str(other), "--verifier", "sac",
                 "--param", "sac.num_samples=8", "--json"]) == 0
    cap = capsys.readouterr()
    assert "comes from dataset 'fashion-mnist', the victim from 'digits'" in cap.err
    assert json.loads(cap.out)["suspects"][0]["metrics"]["SAC"]["value"] is not None


def test_train_non_finite_loss_leaves_no_checkpoint(tmp_path, capsys):
    assert main([*TRAIN, "--lr", "1e30", "--out", str(tmp_path / "o")]) == 2
    assert "training diverged" in capsys.readouterr().err and list(tmp_path.iterdir()) == []


def test_failed_job_error_goes_to_stderr(tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(_spec(victim={"arch": "vgg_small", "kwargs": {"width": 4},
                                                 "train": {"iterations": 4, "batch_size": 32, "lr": 1e30}})))
    assert main(["run", str(spec), "-q", "--out", str(tmp_path / "run")]) == 1
    cap = capsys.readouterr()
    assert "job models/victim failed: RemovalNetError: training diverged" in cap.err
    assert "failed:" not in cap.out
    with ResultStore(tmp_path / "run" / "results.db") as st:
        rows = {r["name"]: r for r in st.rows()}
    assert rows["models/victim"]["status"] == "failed" and rows["models/victim"]["metrics"] is None
    assert all(r["status"] != "done" for n, r in rows.items() if n.startswith("scores/"))


# ------------------------------------------------------------------------------- kill -9 and the lock
def _db_rows(run_dir):
    with ResultStore(run_dir / "results.db") as s:
        rows = s.rows()
    return {r["id"]: (r["name"], r["status"], json.dumps({k: v for k, v in (r["metrics"] or {}).items()
                                                          if "time" not in k and k != "history"}, sort_keys=True))
            for r in rows}


def _cli(*args):
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "REMOVALNET_THREADS": "1"}
    # SIGINT back to its default in the child: a shell's background job (``make test &``) inherits SIGINT ignored,
    # and Python then installs no KeyboardInterrupt handler, so the Ctrl-C case below could not be tested
    return subprocess.Popen([sys.executable, "-m", "removalnet", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _done(run_dir):
    db = run_dir / "results.db"
    if not db.exists():
        return 0
    try:
        with ResultStore(db) as s:
            return sum(v == "done" for v in s.statuses().values())
    except Exception:  # the database is being created
        return 0


def _wait_done(run_dir, n, proc, timeout=120):
    deadline = time.time() + timeout
    while _done(run_dir) < n and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)


@pytest.fixture(scope="module")
def whole(files, tmp_path_factory):
    """The tiny grid, run without interruption."""
    run_dir = tmp_path_factory.mktemp("whole") / "run"
    assert main(["run", str(files["spec"]), "-q", "--out", str(run_dir)]) == 0
    return run_dir


def _leftovers(folder):
    return [p for p in Path(folder).rglob(".*") if p.name != ".lock"]


def test_runner_refuses_a_non_finite_model_by_name(files, whole, tmp_path):
    import shutil

    from removalnet.experiment import load_spec, plan_jobs
    from removalnet.experiment.jobs import execute, model_path

    run_dir = tmp_path / "run"
    shutil.copytree(whole, run_dir)
    jobs = {j.name: j.to_dict() for j in plan_jobs(load_spec(files["spec"]))}
    fp_jobs = {n: j for n, j in jobs.items() if j["kind"] == "fingerprint"}
    save_checkpoint(model_path(run_dir, "attacks/ft/seed-0"), _model(4, nan=True), {"dataset": "digits"})
    res = execute(jobs["scores/ft/seed-0"], run_dir, fp_jobs)
    assert res["status"] == "failed" and res["metrics"] is None
    assert "model attacks/ft/seed-0 has non-finite weights" in res["error"]
    save_checkpoint(model_path(run_dir, "models/victim"), _model(4, nan=True), {"dataset": "digits"})
    res = execute(jobs["scores/ft/seed-1"], run_dir, fp_jobs)
    assert res["status"] == "failed" and "the victim has non-finite weights" in res["error"]


def test_sigkill_mid_grid_resumes_to_the_uninterrupted_result(files, whole, tmp_path, capsys):
    killed = tmp_path / "killed"
    # Ctrl-C: "interrupted" on a line of its own after the progress bar, exit 130
    proc = _cli("run", str(files["spec"]), "--out", str(killed))
    _wait_done(killed, 1, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate()
    assert proc.returncode == 130 and err.endswith("\ninterrupted\n") and "job" in err.split("\n")[-3], err
    assert _leftovers(killed) == []          # no temporary file left by the interrupted job
    # kill -9 in the middle of the grid
    proc = _cli("run", str(files["spec"]), "-q", "--out", str(killed))
    _wait_done(killed, _done(killed) + 2, proc)
    # a second runner on the same folder is refused, naming the holder
    assert main(["run", str(files["spec"]), "-q", "--out", str(killed)]) == 2
    assert f"in use by another removalnet process (pid {proc.pid})" in capsys.readouterr().err
    assert proc.poll() is None, "the grid finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert 3 <= _done(killed) < len(_db_rows(whole))
    assert main(["run", str(files["spec"]), "-q", "--out", str(killed)]) == 0   # the kernel released the lock
    assert _db_rows(killed) == _db_rows(whole)


# a holder that takes the lock as RunLock does (flock on <run>/.lock holding the pid), without importing torch
_HOLDER = ("import fcntl, os, sys, time\n"
           "os.makedirs(sys.argv[1], exist_ok=True)\n"
           "fd = os.open(os.path.join(sys.argv[1], '.lock'), os.O_RDWR | os.O_CREAT)\n"
           "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB); os.write(fd, b'%d' % os.getpid())\n"
           "print('locked', flush=True); time.sleep(float(sys.argv[2]))\n")


def _holder(run_dir, seconds):
    p = subprocess.Popen([sys.executable, "-c", _HOLDER, str(run_dir), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_run_folder_lock_fails_or_waits(files, tmp_path, capsys):
    run_dir = tmp_path / "run"
    holder = _holder(run_dir, 2)
    t0 = time.time()
    assert main(["run", str(files["spec"]), "--seeds", "1", "-q", "--out", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (f"error: run folder {str(run_dir)!r} is in use by another removalnet process "
                           f"(pid {holder.pid}); wait for it to finish, or pass --wait")
    assert not (run_dir / "results.db").exists()
    # --wait: blocks until the holder ends, then runs
    assert main(["run", str(files["spec"]), "--seeds", "1", "-q", "--wait", "--max-jobs", "1",
                 "--out", str(run_dir)]) == 1
    assert holder.poll() == 0 and time.time() - t0 >= 2
    cap = capsys.readouterr()
    assert "is in use by pid" in cap.err and "1 ran" in cap.out and "stopped early" in cap.out
    # released on any exit: an exception inside the block, and a holder killed with SIGKILL
    with pytest.raises(ZeroDivisionError):
        with RunLock(run_dir):
            1 / 0
    with RunLock(run_dir):
        pass
    killed = _holder(run_dir, 60)
    with pytest.raises(RemovalNetError, match=f"pid {killed.pid}"):
        RunLock(run_dir).acquire()
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    with RunLock(run_dir):
        pass
