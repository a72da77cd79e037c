"""``removalnet study NAME [SPEC.yaml]``: run one of the paper's studies and write its report.

Without SPEC the bundled small offline config ``removalnet/configs/studies/NAME.yaml`` (Fashion-MNIST) runs.
A spec without a ``study`` section gets ``study: {name: NAME}`` with the study's defaults. The run is an
ordinary experiment (resumable, ``--executor ray`` works); the report goes to RUN_DIR/report/ (tables as
Markdown, CSV and LaTeX; figures as PNG and PDF) and RUN_DIR/report.html.
"""
from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

import yaml

from ..utils import RemovalNetError, atomic_write_bytes
from ._listing import add_list_option, listing
from .report import report_run
from .run import add_run_arguments, run_spec, spec_overrides

NAME = "study"
HELP = "run one of the paper's studies (--list shows them with their parameters)"


def study_listing() -> str:
    """Every registered study with its title and parameters (``removalnet study --list``)."""
    from ..studies import list_studies, study_class  # lazy: keeps torch off the CLI's start
    return listing("study", [(n, study_class(n).title, study_class(n).PARAMS) for n in list_studies()])


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_list_option(p, "study", study_listing)
    # the names are checked in run(), against the registry: listing them here would import every study
    p.add_argument("name", help="which study (--list shows them with their parameters)")
    p.add_argument("spec", nargs="?", default=None, help="experiment spec (default: the bundled small config)")
    add_run_arguments(p)


def load_study_spec(name: str, spec_path: str | None, overrides: dict):
    from ..experiment import load_spec  # lazy: keeps torch off the CLI's start
    if spec_path is None:
        with resources.as_file(resources.files("removalnet") / "configs" / "studies" / f"{name}.yaml") as path:
            return load_spec(path, overrides)
    raw_study = (yaml.safe_load(Path(spec_path).read_text()) or {}).get("study") if Path(spec_path).exists() else None
    if raw_study and isinstance(raw_study, dict) and raw_study.get("name") != name:
        raise RemovalNetError(f"spec {spec_path!r} is a {raw_study.get('name')!r} study, not {name!r}")
    extra = {} if raw_study else {"study": {"name": name}}
    return load_spec(spec_path, {**extra, **overrides})


def _check_name(args: argparse.Namespace) -> None:
    """A study name that is not registered: argparse's own message for a bad choice (exit status 2)."""
    from ..studies import list_studies  # lazy: keeps torch off the CLI's start
    names = list_studies()
    if args.name not in names:
        raise RemovalNetError(f"argument name: invalid choice: {args.name!r} (choose from "
                              f"{', '.join(map(repr, names))}) (see 'removalnet study --help')")


def run(args: argparse.Namespace) -> int:
    _check_name(args)
    out, s = run_spec(load_study_spec(args.name, args.spec, spec_overrides(args)), args, file=sys.stderr)
    if s is None:
        return 0
    texts = report_run(out, ("md", "html"), echo=lambda m: print(m, file=sys.stderr))
    print(texts["md"], end="")
    atomic_write_bytes(out / "report.html", texts["html"].encode())
    print(f"report: {out / 'report.html'}, figures and tables: {out / 'report'}", file=sys.stderr)
    return 0 if s.ok else 1
