"""How long the command line takes to answer: ``removalnet --version``, ``removalnet --help`` and
``removalnet COMMAND --help`` for every subcommand, each timed as a whole process (start-up, imports, parser,
output) over several runs after a warm-up; minimum, median and maximum wall time, median CPU time.

    python benchmarks/cli_speed.py [--runs 7] [--warmup 1] [--baseline-src DIR] [--external FILE.md]
                                   [--out benchmarks/results/cli-speed.md]

``--baseline-src DIR``: also time ``--version`` and ``--help`` of another source tree (e.g. a ``git worktree``
of an earlier commit, DIR = its ``src/``; the same Python and packages), alternating the two commands run by
run so that a drift of the machine's speed hits both, and report the ratio pair by pair. ``--external FILE``:
a Markdown section of figures measured from outside this script, copied into the results under its own
heading. Writes a Markdown table and a JSON file (same name) with the machine, its load, the commit and the
Python and torch versions. Other work on the machine slows every number: compare medians and ratios.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from table1 import commit, machine  # noqa: E402  (the machine line and commit of every benchmark)

RESULT = HERE / "results" / "cli-speed.md"


def _command() -> list[str]:
    """The ``removalnet`` console script of this Python's environment (else ``python -m removalnet``)."""
    script = Path(sys.executable).parent / "removalnet"
    return [str(script)] if script.exists() else [sys.executable, "-m", "removalnet"]


def _once(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child) of one run; the command must succeed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited with {r.returncode}: {r.stderr.strip()}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _stats(walls: list[float], cpus: list[float]) -> dict[str, float]:
    return {"min_s": min(walls), "median_s": statistics.median(walls), "max_s": max(walls),
            "cpu_median_s": statistics.median(cpus), "runs": len(walls)}


def time_commands(args_list: list[list[str]], runs: int, warmup: int) -> dict[str, dict[str, float]]:
    env = dict(os.environ)
    out = {}
    for args in args_list:
        for _ in range(warmup):
            _once(_command() + args, env)
        walls, cpus = zip(*(_once(_command() + args, env) for _ in range(runs)))
        out[" ".join(args)] = _stats(list(walls), list(cpus))
        print(f"removalnet {' '.join(args):<22} median {out[' '.join(args)]['median_s']:.3f}s", file=sys.stderr)
    return out


def paired(args_list: list[list[str]], baseline_src: Path, runs: int, warmup: int) -> dict[str, dict]:
    """This tree against ``baseline_src``, alternating run by run: each side's figures and the ratios."""
    env_a = dict(os.environ)
    env_b = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(baseline_src),
                                                                        os.environ.get("PYTHONPATH")]))}
    out = {}
    for args in args_list:
        for _ in range(warmup):
            _once(_command() + args, env_a)
            _once(_command() + args, env_b)
        a, b = [], []
        for _ in range(runs):
            a.append(_once(_command() + args, env_a))
            b.append(_once(_command() + args, env_b))
        ratios = [x[0] / y[0] for x, y in zip(a, b)]
        out[" ".join(args)] = {"this": _stats(*map(list, zip(*a))), "baseline": _stats(*map(list, zip(*b))),
                               "ratio_median": statistics.median(ratios), "ratio_min": min(ratios),
                               "ratio_max": max(ratios)}
    return out


def _tree_commit(src: Path) -> str:
    """The commit a source tree is checked out at (e.g. a ``git worktree``), or its path."""
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=src, text=True,
                                       stderr=subprocess.DEVNULL).strip()
    except (OSError, subprocess.CalledProcessError):
        return str(src)


def _version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "not installed"


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = ["# Command-line start-up", "",
             f"{res['date']}, commit {res['commit']}; {m['description']}; torch {m['torch']}; "
             f"load average before {m['loadavg_before'][0]:.2f}, after {m['loadavg_after'][0]:.2f} "
             f"({m['cpu_count']} cores). Each command a whole process (`{res['command']}`), {res['runs']} runs after "
             f"{res['warmup']} warm-up; wall seconds. Goals on an idle machine: `--version` < 0.5 s, `--help` and "
             "`COMMAND --help` < 1 s.", "",
             "| command | min | median | max | CPU (median) |", "| --- | ---: | ---: | ---: | ---: |"]
    for cmd, s in res["timings"].items():
        lines.append(f"| `removalnet {cmd}` | {s['min_s']:.3f} | {s['median_s']:.3f} | {s['max_s']:.3f} | "
                     f"{s['cpu_median_s']:.3f} |")
    if res.get("paired"):
        lines += ["", f"## Against {res['baseline']}", "",
                  "The two trees run by turns (this, baseline, this, ...); ratio = this / baseline, pair by pair.", "",
                  "| command | this (median) | baseline (median) | ratio median (min-max) |",
                  "| --- | ---: | ---: | ---: |"]
        for cmd, p in res["paired"].items():
            lines.append(f"| `removalnet {cmd}` | {p['this']['median_s']:.3f} | {p['baseline']['median_s']:.3f} | "
                         f"{p['ratio_median']:.3f} ({p['ratio_min']:.3f}-{p['ratio_max']:.3f}) |")
    if res.get("external"):
        lines += ["", res["external"].strip()]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--baseline-src", default=None, metavar="DIR",
                    help="src/ of another tree to compare --version and --help with")
    ap.add_argument("--external", default=None, metavar="FILE.md", help="a Markdown section to include")
    ap.add_argument("--out", default=str(RESULT))
    args = ap.parse_args()
    if args.runs < 1 or args.warmup < 0:
        ap.error("--runs must be >= 1 and --warmup >= 0")
    from removalnet.cli import build_parser
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    commands = [["--version"], ["--help"]] + [[name, "--help"] for name in sorted(sub.choices)]
    load_before = os.getloadavg()
    timings = time_commands(commands, args.runs, args.warmup)
    pairs = paired(commands[:2], Path(args.baseline_src).resolve(), args.runs, args.warmup) \
        if args.baseline_src else {}
    res = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "commit": commit(),
           "command": " ".join(Path(c).name for c in _command()), "runs": args.runs, "warmup": args.warmup,
           "machine": {"description": machine(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
                       "python": platform.python_version(), "torch": _version("torch"),
                       "loadavg_before": list(load_before), "loadavg_after": list(os.getloadavg())},
           "timings": timings, "paired": pairs,
           "baseline": f"commit {_tree_commit(Path(args.baseline_src))}" if args.baseline_src else None,
           "external": Path(args.external).read_text() if args.external else None}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(res))
    out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {out} and {out.with_suffix('.json')}", file=sys.stderr)


if __name__ == "__main__":
    main()
