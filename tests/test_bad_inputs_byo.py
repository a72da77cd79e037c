"""Bad input around a user's own model files, weights, npz and folder data, audit, report and specs (the third
round): each refusal is one ``error: ...`` line and exit status 2 and leaves nothing behind (nothing in the
case's folder, every input file as it was, a results database included); input that is legal but suspect gives
one ``warning: ...`` line and the command goes on.
"""
from __future__ import annotations

import sqlite3
import struct
import textwrap
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from removalnet.cli import build_parser, main
from removalnet.guards import check_comparable
from removalnet.params import Option
from helpers import LENET, user_lenet
from test_bad_inputs import _spec as _grid

USER = textwrap.dedent('''
    import sys
    import torch
    from torch import nn

    class Exits(BaseException):
        pass

    def exits(num_classes=10):
        sys.exit(3)

    def five(num_classes=10):           # ignores num_classes: 5 logits whatever is asked
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 5))

    def interrupted(num_classes=10):
        raise KeyboardInterrupt

    class ExitsInForward(nn.Module):
        def __init__(self, num_classes=10):
            super().__init__()
            self.fc = nn.Linear(4, num_classes)

        def forward(self, x):
            sys.exit("no forward here")

    class ExitsInTraining(nn.Module):   # fx cannot trace it (a data-dependent branch): kept whole, run as it is
        def __init__(self, num_classes=10):
            super().__init__()
            self.fc = nn.Linear(784, num_classes)

        def forward(self, x):
            if x.sum() > -1e9 and self.training:
                sys.exit(5)
            return self.fc(x.flatten(1))

    def train_exits(model, train, test, seed):
        sys.exit(1)
''')


def _png(path: Path, width: int, height: int) -> None:
    """A PNG that declares ``width`` x ``height`` pixels (its data is not needed to be refused)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


def _folder(root: Path, classes=("a", "b"), n=3, empty=(), size=8, rng=np.random.default_rng(0)):
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            if (split, c) in empty:
                continue
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return root


def _spec(name="tiny", **over):
    return _grid(name, **{"seeds": [0], **over})


def _db(path: Path, script: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as c:
        c.executescript(script)
    c.close()
    return path


@pytest.fixture(scope="module")
def f(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    f = {"dir": d}
    (d / "user.py").write_text(USER)
    (d / "exits.py").write_text("import sys\nsys.exit(0)\n")
    (d / "stops.py").write_text("class Stop(BaseException):\n    pass\n\nraise Stop('not a model file')\n")
    (d / "mymodel.py").write_text(LENET)
    lenet = user_lenet(d / "mymodel.py")
    torch.save(lenet.state_dict(), d / "lenet.pt")
    torch.save(lenet.state_dict(), d / "lenet2.pt")
    torch.save({k: torch.zeros(1) for k in ("features.0.weight", "features.0.bias", "head.weight")}, d / "other.pt")
    torch.save(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)), d / "whole.pt")
    (d / "a_file").write_text("not a folder")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (60, 8, 8), dtype=np.uint8)
    y = np.repeat(np.arange(3), 20)
    np.savez(d / "million.npz", x=x, y=np.where(np.arange(60) < 2, 1_000_000, y))
    np.savez(d / "single.npz", x=x, y=np.where(np.arange(60) == 0, 3, y))
    np.savez(d / "unused.npz", x=x, y=y, classes=np.array(["a", "b", "c", "d"]))
    np.savez(d / "beyond.npz", x=x, y=y, x_test=x[:6], y_test=np.full(6, 5))
    np.savez(d / "const.npz", x=np.full((60, 8, 8), 7, np.uint8), y=y)
    _folder(d / "bomb")
    _png(d / "bomb" / "train" / "a" / "huge.png", 20000, 20000)      # over twice PIL's limit: an error in PIL
    _folder(d / "band")
    _png(d / "band" / "test" / "b" / "big.png", 10000, 10000)        # over the limit, under twice: a PIL warning
    _folder(d / "empty_train", empty={("train", "b")})
    _folder(d / "empty_test", empty={("test", "b")}, classes=("a", "b", "c"))
    # run folders: not SQLite, empty, another program's database, ours in name only, a folder in its place
    (d / "garbage").mkdir()
    (d / "garbage" / "results.db").write_bytes(np.random.default_rng(1).bytes(3000))
    (d / "empty_db").mkdir()
    (d / "empty_db" / "results.db").write_bytes(b"")
    _db(d / "foreign" / "results.db", "CREATE TABLE notes (t TEXT); INSERT INTO notes VALUES ('mine');")
    _db(d / "lookalike" / "results.db", "CREATE TABLE jobs (x); CREATE TABLE meta (y);")
    (d / "db_dir" / "results.db").mkdir(parents=True)
    (d / "no_data").mkdir()
    specs = {
        "exits": _spec(victim={"model": f"{d / 'exits.py'}:Net"}),
        "factory_exits": _spec(victim={"model": f"{d / 'user.py'}:exits"}),
        "five": _spec(victim={"model": f"{d / 'user.py'}:five"}),
        "no_data": _spec(dataset="fashion-mnist", data_root=str(d / "no_data")),
        "tiny": _spec(),
    }
    for name, spec in specs.items():
        f[f"spec_{name}"] = d / f"{name}.yaml"
        f[f"spec_{name}"].write_text(yaml.safe_dump(spec))
    (d / "margin.yaml").write_text("margin: 500\n")
    (d / "collapse.yaml").write_text("collapse-margin: true\n")
    return f


TRAIN = ["train", "--data", "digits", "--iterations", "1", "--batch-size", "32", "-q"]


def _user(f, name):
    return f"{f['dir'] / 'user.py'}:{name}"


def _audit(f, *extra, weights="lenet.pt", model=None):
    return ["audit", "--model", model or f"{f['dir'] / 'mymodel.py'}:LeNet", "--weights", str(f["dir"] / weights),
            "--data", "digits", "-q", *extra]


def _train_data(f, ref):
    return ["train", "--data", ref, "--width", "4", "--iterations", "1", "--batch-size", "16", "-q"]


# (case id, argv from (inputs, out), fragment of the one error line); every case exits with status 2
CASES = [
    # a user's model file or factory that calls sys.exit, raises a BaseException, or exits in its forward
    ("train-model-file-exits", lambda f, o: [*TRAIN, "--model", f"{f['dir'] / 'exits.py'}:Net", "--out", o],
     "exits.py' called sys.exit(0) while being imported"),
    ("train-factory-exits", lambda f, o: [*TRAIN, "--model", _user(f, "exits"), "--out", o],
     "model factory '" + "{dir}/user.py:exits' called sys.exit(3) when called as exits(num_classes=10)"),
    ("train-model-file-base-exception", lambda f, o: [*TRAIN, "--model", f"{f['dir'] / 'stops.py'}:Net", "--out", o],
     "stops.py' raised Stop while being imported: not a model file"),
    ("train-forward-exits", lambda f, o: [*TRAIN, "--model", _user(f, "ExitsInForward"), "--out", o],
     "ExitsInForward' called sys.exit('no forward here') while being traced"),
    ("train-forward-exits-in-training", lambda f, o: [*TRAIN, "--model", _user(f, "ExitsInTraining"), "--out", o],
     "'train' stopped: code of yours that it ran (a model's forward, a training function) called sys.exit(5)"),
    ("run-model-file-exits", lambda f, o: ["run", str(f["spec_exits"]), "-q", "--out", o],
     "spec: victim.model: model file"),
    ("run-factory-exits", lambda f, o: ["run", str(f["spec_factory_exits"]), "-q", "--out", o],
     "spec: victim.model: model factory"),
    ("run-factory-wrong-logits", lambda f, o: ["run", str(f["spec_five"]), "-q", "--out", o],
     "spec: victim.model: model '" + "{dir}/user.py:five' returns (2, 5)"),
    ("audit-model-file-exits", lambda f, o: [*_audit(f, "--out", o, model=f"{f['dir'] / 'exits.py'}:Net")],
     "--model: model file"),
    ("audit-factory-exits", lambda f, o: [*_audit(f, "--out", o, model=_user(f, "exits"))],
     "--model: model factory"),
    # images PIL refuses
    ("train-folder-decompression-bomb", lambda f, o: [*_train_data(f, f"folder:{f['dir'] / 'bomb'}"), "--out", o],
     "huge.png' (DecompressionBombError: "),
    ("train-folder-decompression-bomb-warning", lambda f, o: [*_train_data(f, f"folder:{f['dir'] / 'band'}"),
                                                               "--out", o], "big.png' (DecompressionBombWarning: "),
    # npz labels and folder classes
    ("train-npz-label-million", lambda f, o: [*_train_data(f, f"npz:{f['dir'] / 'million.npz'}"), "--out", o],
     "y has no sample of label(s) 3, 4, 5, 6, 7, ... (999997 in all) (labels must be 0..K-1, here K = 1000001)"),
    ("train-npz-single-sample-label", lambda f, o: [*_train_data(f, f"npz:{f['dir'] / 'single.npz'}"), "--out", o],
     "label 3 has a single sample"),
    ("train-npz-classes-unused", lambda f, o: [*_train_data(f, f"npz:{f['dir'] / 'unused.npz'}"), "--out", o],
     "y has no sample of label(s) 3"),
    ("train-npz-test-labels-beyond-train", lambda f, o: [*_train_data(f, f"npz:{f['dir'] / 'beyond.npz'}"),
                                                          "--out", o], "y has no sample of label(s) 3, 4, 5"),
    ("train-folder-empty-train-class", lambda f, o: [*_train_data(f, f"folder:{f['dir'] / 'empty_train'}"),
                                                      "--out", o], "class folder(s) train/b/ hold no image"),
    # weights in the user's terms
    ("train-weights-other-architecture", lambda f, o: [*TRAIN, "--model", "torchvision:resnet18", "--weights",
                                                       str(f["dir"] / "lenet.pt"), "--out", o],
     "lenet.pt' does not match the architecture: missing 121 tensor(s), e.g. 'bn1.bias'"),
    ("train-weights-registered-other-architecture", lambda f, o: [*TRAIN, "--model", "resnet18", "--weights",
                                                                  str(f["dir"] / "lenet.pt"), "--out", o],
     "lenet.pt' does not match the architecture: missing 121 tensor(s), e.g. 'bn1.bias'"),
    ("train-weights-pickled-model", lambda f, o: [*TRAIN, "--model", f"{f['dir'] / 'mymodel.py'}:LeNet", "--weights",
                                                  str(f["dir"] / "whole.pt"), "--out", o],
     "save the weights alone with `torch.save(model.state_dict(), PATH)`"),
    ("audit-weights-other-architecture", lambda f, o: [*_audit(f, "--out", o, weights="other.pt")],
     "--weights: '" + "{dir}/other.pt' does not match the architecture: missing 10 tensor(s), e.g. 'conv1.bias'"),
    ("audit-reference-pickled-model", lambda f, o: [*_audit(f, "--references", str(f["dir"] / "whole.pt"),
                                                            str(f["dir"] / "lenet2.pt"), "--out", o)],
     "--references (file 1): refusing to load"),
    # numeric options: checked before anything runs, from the command line or a --config file
    ("audit-margin-negative", lambda f, o: [*_audit(f, "--margin", "-5", "--out", o)], "--margin must be >= 0"),
    ("audit-margin-nan", lambda f, o: [*_audit(f, "--margin", "nan", "--out", o)], "--margin must be finite"),
    ("audit-config-margin", lambda f, o: [*_audit(f, "--config", str(f["dir"] / "margin.yaml"), "--out", o)],
     "--margin must be <= 100, got 500"),
    ("report-collapse-margin-negative", lambda f, o: ["report", o, "--collapse-margin", "-5"],
     "--collapse-margin must be >= 0, got -5.0"),
    ("report-collapse-margin-nan", lambda f, o: ["report", o, "--collapse-margin", "nan"],
     "--collapse-margin must be finite, got nan"),
    ("report-config-collapse-margin-bool", lambda f, o: ["report", o, "--config", str(f["dir"] / "collapse.yaml")],
     "--collapse-margin must be a number, got True"),
    ("run-max-jobs-negative", lambda f, o: ["run", str(f["spec_tiny"]), "-q", "--max-jobs", "-1", "--out", o],
     "--max-jobs must be >= 1, got -1"),
    ("train-input-size-zero", lambda f, o: [*TRAIN, "--width", "4", "--input-size", "0", "--out", o],
     "--input-size must be >= 1, got 0"),
    # results databases: read-only, and refused unless ours
    ("report-db-not-sqlite", lambda f, o: ["report", str(f["dir"] / "garbage")],
     "results.db' is not a removalnet results database (SQLite: file is not a database)"),
    ("report-db-empty", lambda f, o: ["report", str(f["dir"] / "empty_db")], "has no jobs and meta tables"),
    ("report-db-foreign", lambda f, o: ["report", str(f["dir"] / "foreign")], "it holds notes"),
    ("report-db-lookalike", lambda f, o: ["report", str(f["dir"] / "lookalike")], "no jobs and meta tables of ours"),
    ("report-db-is-a-folder", lambda f, o: ["report", str(f["dir"] / "db_dir")], "no results database at"),
    ("run-dry-run-db-not-sqlite", lambda f, o: ["run", str(f["spec_tiny"]), "--dry-run", "--out",
                                                str(f["dir"] / "garbage")], "is not a removalnet results database"),
    ("run-db-not-sqlite", lambda f, o: ["run", str(f["spec_tiny"]), "-q", "--out", str(f["dir"] / "garbage")],
     "is not a removalnet results database"),
    ("report-out-under-file", lambda f, o: ["report", o, "--out", str(f["dir"] / "a_file" / "r.md")],
     "its folder '" + "{dir}/a_file' exists and is not a directory"),
    ("report-out-is-folder", lambda f, o: ["report", o, "--out", str(f["dir"])], "is a directory; give a file name"),
    ("report-figures-under-file", lambda f, o: ["report", o, "--figures", str(f["dir"] / "a_file" / "figs")],
     "is not a directory"),
    # data a spec names but that is not there: one line in preflight, naming where it was looked for
    ("run-data-missing", lambda f, o: ["run", str(f["spec_no_data"]), "-q", "--out", o],
     "spec: dataset: fashion-mnist: "),
]


def _snapshot(root: Path) -> dict:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("case,argv,fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input(f, tmp_path, capsys, monkeypatch, case, argv, fragment):
    monkeypatch.chdir(tmp_path)      # a command that wrote to its working folder would show here too
    out = tmp_path / "out"
    before = _snapshot(f["dir"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            rc = main(argv(f, str(out)))
        except SystemExit as e:
            rc = e.code
    cap = capsys.readouterr()
    assert not [w for w in caught if issubclass(w.category, (UserWarning, RuntimeWarning))], \
        [str(w.message) for w in caught]
    lines = [line for line in cap.err.splitlines() if line.strip() and not line.startswith("warning: ")]
    assert rc == 2, (rc, cap.err)
    assert len(lines) == 1 and lines[0].startswith("error: "), cap.err
    assert fragment.format(dir=f["dir"]) in lines[0], lines[0]
    assert "Traceback" not in cap.err and cap.out == ""
    assert list(tmp_path.iterdir()) == []
    assert _snapshot(f["dir"]) == before


def test_wrong_architecture_speaks_the_users_names(f, tmp_path, capsys):
    """No internal name (blocks.*) and none of the toolkit's own buffers (normalize.*) in the count."""
    for model, weights in (("torchvision:resnet18", "lenet.pt"), ("resnet18", "lenet.pt"),
                           (f"{f['dir'] / 'mymodel.py'}:LeNet", "other.pt")):
        assert main([*TRAIN, "--model", model, "--weights", str(f["dir"] / weights), "--out", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert "does not match the architecture" in err and "blocks." not in err and "normalize" not in err, err
    assert main([*TRAIN, "--model", f"{f['dir'] / 'mymodel.py'}:LeNet", "--weights", str(f["dir"] / "whole.pt"),
                 "--out", str(tmp_path)]) == 2
    assert "add_safe_globals" not in capsys.readouterr().err


def test_audit_errors_name_its_options_not_a_spec(f, tmp_path, capsys):
    assert main(_audit(f, "--out", str(tmp_path / "o"), weights="other.pt")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --weights: ") and "spec:" not in err, err


def test_factory_interrupt_stays_an_interrupt(f, tmp_path, capsys):
    assert main([*TRAIN, "--model", _user(f, "interrupted"), "--out", str(tmp_path / "o")]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "interrupted"
    assert list(tmp_path.iterdir()) == []


def test_training_function_that_exits_fails_its_job(f, tmp_path, capsys):
    """sys.exit in a user's training function ends its job as failed, never the runner (which said nothing and
    exited 0)."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(_spec(references={"count": 1, "train_fn": _user(f, "train_exits")},
                                         attacks=[], verifiers={})))
    assert main(["run", str(spec), "-q", "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "job models/reference-0 failed: RemovalNetError: training function" in err and "called sys.exit(1)" in err


@pytest.mark.parametrize("data,fragment", [
    ("empty_test", "class folder(s) test/b/ hold no image: test accuracy leaves those classes out"),
    ("const.npz", "the training images are constant in channel(s) 0 (std 0)"),
])
def test_suspect_data_warns_once(f, tmp_path, capsys, data, fragment):
    ref = f"{'npz' if data.endswith('.npz') else 'folder'}:{f['dir'] / data}"
    assert main([*_train_data(f, ref), "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning: ") and fragment in lines[0], err
    assert (tmp_path / "model.safetensors").exists()


def test_dry_run_reports_missing_data(f, tmp_path, capsys):
    assert main(["run", str(f["spec_no_data"]), "--dry-run", "--out", str(tmp_path / "run")]) == 0
    cap = capsys.readouterr()
    warned = [line for line in cap.err.splitlines() if line.startswith("warning: ")]
    assert len(warned) == 1 and "spec: dataset: fashion-mnist" in warned[0] and str(f["dir"] / "no_data") in warned[0]
    assert "to run" in cap.out and list(tmp_path.iterdir()) == []


def test_report_never_writes_the_database(f, tmp_path, capsys):
    """A finished run: report reads it without a byte changed and no -wal/-shm file created; rerunning the
    grid says once that every job is done (no empty progress bar drawn twice)."""
    run = tmp_path / "run"
    assert main(["run", str(f["spec_tiny"]), "-q", "--out", str(run)]) == 0
    capsys.readouterr()
    before = _snapshot(run)
    assert main(["report", str(run)]) == 0
    assert _snapshot(run) == before
    assert main(["run", str(f["spec_tiny"]), "--out", str(run)]) == 0
    err = capsys.readouterr().err
    assert err.count("tiny: all ") == 1 and "jobs already done" in err and "0job" not in err, err


def test_dataset_of_the_same_file_spelled_twice_is_not_a_mismatch(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    check_comparable({"dataset": f"npz:{tmp_path / 'd.npz'}"}, {"dataset": "npz:d.npz"}, what="the victim",
                     ref_what="the references")
    assert capsys.readouterr().err == ""
    check_comparable({"dataset": f"npz:{tmp_path / 'd.npz'}"}, {"dataset": "npz:e.npz"}, what="the victim",
                     ref_what="the references")
    assert capsys.readouterr().err.startswith("warning: the victim comes from dataset 'npz:e.npz'")


def _required(sub) -> list[str]:
    """Placeholder values for the arguments a subcommand requires (never used: the command must not run)."""
    argv: list[str] = []
    for a in sub._actions:
        if a.required or (not a.option_strings and a.nargs not in ("?", "*")):
            value = str(next(iter(a.choices))) if a.choices else "x"
            argv += [value] if not a.option_strings else [a.option_strings[-1], value]
    return argv


def test_every_ranged_option_is_checked_before_the_command_runs(monkeypatch, capsys):
    """Each option declared with a range refuses a value below it (and nan) with one line, before its command
    does anything (the command itself must not be reached)."""
    parser = build_parser()
    monkeypatch.setattr("removalnet.cli.build_parser", lambda: parser)
    commands = next(a for a in parser._actions if a.dest == "command").choices
    seen = 0
    for name, sub in commands.items():
        monkeypatch.setitem(sub._defaults, "_run", lambda args: pytest.fail(f"{args.command} ran"))
        for action in sub._actions:
            if not isinstance(action.type, Option) or action.type.param.low is None:
                continue
            seen += 1
            p = action.type.param
            for value in (str(p.low - 1), "nan") if p.kind is float else (str(int(p.low) - 1),):
                assert main([name, *_required(sub), action.option_strings[-1], value]) == 2, (name, action.dest)
                err = capsys.readouterr().err
                assert err.startswith(f"error: {action.option_strings[-1]} must be ") and err.count("\n") == 1, err
    assert seen >= 10
