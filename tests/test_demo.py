"""``removalnet demo``: the README's main command, through the CLI (the full-size demo runs in CI as ``make demo``)."""
import argparse

from removalnet.cli import build_parser, main


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def test_demo_parser_has_every_option_its_run_reads():
    # run.spec_overrides reads --seeds, --device and --smoke; a parser without one of them crashed the demo
    args = _subparser("demo").parse_args([])
    from removalnet.commands.run import spec_overrides
    assert spec_overrides(args) == {}
    assert spec_overrides(_subparser("demo").parse_args(["--smoke", "--seeds", "1"])) == {"smoke": True, "seeds": 1}


def test_demo_smoke_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--smoke", "--quiet", "--threads", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Table 1: demo-smoke" in printed and "How to read it:" in printed
    assert "RemovalNet(S_LTD)" in printed and "RemovalNet, the paper's attack" in printed
    # the terminal view fits a terminal; the files hold the full tables
    assert max(len(line) for line in printed.splitlines() if not line.startswith("full tables:")) <= 120
    md = (out / "report.md").read_text()
    assert "## Table 1: demo-smoke" in md and "### How to read this table" in md
    assert md.count("\n|") > 10  # the table's rows
    assert (out / "report.html").stat().st_size > 1000
    # a second run reuses every job
    assert main(["demo", "--smoke", "--quiet", "--threads", "1", "--out", str(out)]) == 0
    assert "0 jobs ran" in capsys.readouterr().out
