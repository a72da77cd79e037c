"""The command line starts without torch: building the parser, ``--version`` and every ``--help`` import none of
the heavy libraries (each command imports them when it runs); Python warnings reach the user as one line each."""
import json
import subprocess
import sys
import warnings

import pytest

from removalnet.cli import main

HEAVY = ("torch", "timm", "torchvision", "skimage", "matplotlib")


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def _loaded(code: str) -> list[str]:
    """The heavy libraries a fresh interpreter has imported after ``code``."""
    r = _python(code + f"\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])


def test_building_the_parser_imports_no_heavy_library():
    assert _loaded("import removalnet.cli\nremovalnet.cli.build_parser()") == []


def test_every_help_imports_no_heavy_library():
    code = """
import contextlib, io
from removalnet.cli import build_parser, main
commands = [a for a in build_parser()._actions if a.dest == "command"][0].choices
assert len(commands) >= 10, sorted(commands)
for argv in [["--help"]] + [[c, "--help"] for c in commands]:
    with contextlib.redirect_stdout(io.StringIO()) as out:
        try:
            main(argv)
        except SystemExit as e:
            assert e.code == 0, (argv, e.code)
    assert "usage: removalnet" in out.getvalue(), argv
"""
    assert _loaded(code) == []


def test_the_check_sees_a_heavy_import():
    assert "torch" in _loaded("import removalnet.cli\nimport removalnet.models")


def test_import_removalnet_is_light_and_its_api_still_there():
    assert _loaded("import removalnet\nassert removalnet.__version__") == []
    r = _python("import removalnet\nm = removalnet.create_model('vgg_small', 10, 1, 28)\n"
                "print(type(m).__name__, isinstance(m, removalnet.SplitModel), 'SplitModel' in dir(removalnet))")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["SplitModel", "True", "True"]
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        import removalnet
        removalnet.nope


def test_version_in_a_subprocess():
    import removalnet
    r = subprocess.run([sys.executable, "-m", "removalnet", "--version"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"removalnet {removalnet.__version__}\n"


def test_the_study_hooks_load_where_the_runner_looks_them_up():
    """A Ray worker imports only the runner: the studies' job kind and spec section must still be found."""
    r = _python("from removalnet.experiment.hooks import job_kind, spec_section\n"
                "print(callable(job_kind('study')), spec_section('study').key)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "study"]


def test_the_parser_constants_agree_with_the_library():
    from removalnet.commands import audit, report, verify
    from removalnet.report import FORMATS
    from removalnet.report.card import DEFAULT_MARGIN, DEFAULT_MAX_FPR
    from removalnet.verify import MIN_REFERENCES, RULES
    assert report.FORMATS == FORMATS and report.RULES == RULES and verify.RULES == RULES
    assert verify.MIN_REFERENCES == MIN_REFERENCES
    assert audit.DEFAULT_MARGIN == DEFAULT_MARGIN   # the same constant, not a computed value
    assert audit.DEFAULT_MAX_FPR == DEFAULT_MAX_FPR


def test_an_unknown_study_name_is_refused_as_argparse_would(capsys):
    from removalnet.studies import list_studies
    assert main(["study", "nope", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: argument name: invalid choice: 'nope' (choose from {', '.join(map(repr, list_studies()))})"
                   " (see 'removalnet study --help')\n")


# ------------------------------------------------------------------------------------------------ warnings
def _warning_command(monkeypatch, body):
    """``removalnet datasets`` replaced by ``body`` (the parser binds a command's run when it is built)."""
    from removalnet.commands import datasets

    def run(args):
        body()
        return 0
    monkeypatch.setattr(datasets, "run", run)


def _warn_twice_and_once():
    for _ in range(2):  # the same text from the same place (Python would show it once) ...
        warnings.warn("fewer than 5 references:\n  the threshold is loose", UserWarning)
    warnings.warn("fewer than 5 references:\n  the threshold is loose", UserWarning)  # ... and from another
    warnings.warn("another one", RuntimeWarning)


def test_a_warning_is_one_line_once(monkeypatch, capsys):
    _warning_command(monkeypatch, _warn_twice_and_once)
    assert main(["datasets"]) == 0
    err = capsys.readouterr().err
    assert err == "warning: fewer than 5 references: the threshold is loose\nwarning: another one\n"
    assert warnings.showwarning is not None and getattr(warnings.showwarning, "__module__", "") != "removalnet.cli"


def test_a_warning_under_a_progress_bar_gets_a_line_of_its_own(monkeypatch, capsys):
    from tqdm import tqdm

    def body():
        bar = tqdm(total=3, desc="jobs", file=sys.stderr)
        bar.update(1)
        warnings.warn("inside the bar")
        bar.update(2)
        bar.close()
    _warning_command(monkeypatch, body)
    assert main(["datasets"]) == 0
    lines = [line.split("\r")[-1] for line in capsys.readouterr().err.split("\n")]
    assert "warning: inside the bar" in lines
    assert "UserWarning" not in "".join(lines)


def test_report_with_two_references_warns_in_one_line_each(tmp_path, capsys):
    """The thresholds' "fewer than 5 references" warnings through the real command."""
    from removalnet.experiment.store import ResultStore
    with ResultStore(tmp_path / "results.db") as s:
        s.set_meta("spec", {"name": "two", "attacks": [{"name": "ft", "label": "FT(0.5)"}],
                            "threshold_rule": "minmax"})
        s.record({"id": "v", "kind": "train", "name": "models/victim", "seed": 0, "config": {"role": "victim"}},
                 "done", metrics={"accuracy": 0.9})
        ids = ["v"]
        rows = [("reference", "reference", 0.9, 0.2, 0.5), ("reference", "reference", 0.9, 0.3, 0.4),
                ("attack", "FT(0.5)", 0.88, 0.9, 0.1), ("attack", "FT(0.5)", 0.86, 0.8, 0.2)]
        for i, (role, label, acc, mr, sac) in enumerate(rows):
            job = {"id": f"s{i}", "kind": "score", "name": f"scores/{label}/{i}", "seed": i,
                   "config": {"role": role, "label": label, "index": i}}
            s.record(job, "done", metrics={"accuracy": acc, "IPG-MR": mr, "SAC": sac})
            ids.append(job["id"])
        s.set_meta("plan", ids)
    assert main(["report", str(tmp_path)]) == 0
    err = capsys.readouterr().err.splitlines()
    warned = [line for line in err if line.startswith("warning: ")]
    assert warned and len(warned) == len(set(warned)), err
    assert any("reference" in line for line in warned), err
    assert not [line for line in err if "Warning" in line or ".py:" in line or not line.startswith("warning: ")], err
