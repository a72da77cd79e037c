import json
import subprocess
import sys

import pytest

from removalnet.cli import main


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("train", "models", "datasets"):
        assert cmd in out


def test_models_lists_registry(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "vgg_small" in out and "resnet_small" in out


def test_bad_input_is_one_line_and_nonzero(tmp_path):
    r = subprocess.run([sys.executable, "-m", "removalnet", "train", "--data", "no-such-data", "--out", str(tmp_path / "o")],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error: ") and "no-such-data" in r.stderr
    assert not (tmp_path / "o").exists()


def test_config_file_with_override(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: digits\nmodel: vgg_small\nwidth: 4\niterations: 5\nbatch-size: 32\nseed: 1\n")
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--iterations", "3", "--out", str(out), "-q"]) == 0
    side = json.loads((out / "model.json").read_text())
    assert side["iterations"] == 3 and side["seed"] == 1 and side["dataset"] == "digits"
    assert side["train_config"]["batch_size"] == 32
    cfg.write_text("learning-rate: 0.1\n")
    assert main(["train", "--config", str(cfg), "--out", str(out)]) == 2
    assert "unknown option 'learning-rate'" in capsys.readouterr().err
