"""The ``removalnet`` command line.

Subcommands live in ``removalnet/commands/<name>.py``; each module defines ``NAME``, ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``. Every subcommand accepts ``--config FILE.yaml``: the
file's keys (the long option names, with dashes or underscores) become defaults that options given on the
command line override. Errors in the user's input print one line, ``error: ...``, and exit with status 2.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys
import warnings
from pathlib import Path
from typing import Callable, Sequence

import yaml

from . import __version__, commands
from .params import Option
from .utils import RemovalNetError

log = logging.getLogger("removalnet")


class _Parser(argparse.ArgumentParser):
    """argparse with the toolkit's error format: one line ``error: ...`` and a pointer to ``--help``, exit 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {message} (see '{self.prog} --help')\n")

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        # a subcommand's --list prints the registry and exits: anything given with it would be ignored silently
        if args is not None and "--list" in args and len(args) > 1 \
                and any("--list" in a.option_strings for a in self._actions):
            self.error(f"--list takes no other arguments (got {' '.join(a for a in args if a != '--list')})")
        return super().parse_known_args(args, namespace)


def _close_progress_bars() -> None:
    """Close open tqdm bars so that a following message starts on a line of its own."""
    from tqdm import tqdm
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def _warnings_as_lines() -> Callable[[], None]:
    """Show every Python warning as one line ``warning: <message>`` on stderr, each text once per process (not
    Python's file, line number and source line at every place that warns); open progress bars are cleared for the
    line and drawn again below it. Returns what puts the previous display back."""
    previous, seen = warnings.showwarning, set()

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = " ".join(str(message).split())
        if text in seen:
            return
        seen.add(text)
        tqdm = sys.modules.get("tqdm")   # bars exist only where tqdm was imported
        if tqdm is not None and getattr(tqdm.tqdm, "_instances", None):
            tqdm.tqdm.write(f"warning: {text}", file=sys.stderr)
        else:
            print(f"warning: {text}", file=sys.stderr)

    warnings.showwarning = show

    def restore() -> None:
        warnings.showwarning = previous
    return restore


def _discover() -> list:
    mods = []
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{commands.__name__}.{info.name}")
        if all(hasattr(mod, a) for a in ("NAME", "HELP", "add_arguments", "run")):
            mods.append(mod)
    return mods


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="removalnet",
        description="DNN fingerprint removal attacks (RemovalNet and baselines) and the ownership verifiers "
                    "they are measured against.")
    parser.add_argument("--version", action="version", version=f"removalnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _discover():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        g = p.add_argument_group("output")
        g.add_argument("-q", "--quiet", action="store_true", help="no progress bars, only results and errors")
        g.add_argument("-v", "--verbose", action="store_true", help="debug logging")
        g.add_argument("--threads", type=Option(int, low=1), default=None, metavar="N",
                       help="CPU threads torch may use (default: $REMOVALNET_THREADS, else torch's choice; "
                            "1 is fastest for the small models and wherever other processes share the cores)")
        p.add_argument("--config", metavar="FILE.yaml",
                       help="YAML file of option defaults (keys are option names); command-line options win")
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run, _parser=p)
    return parser


def _apply_config(args: argparse.Namespace, argv: Sequence[str]) -> argparse.Namespace:
    if not getattr(args, "config", None):
        return args
    path = Path(args.config)
    if not path.exists():
        raise RemovalNetError(f"config file {str(path)!r} does not exist")
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise RemovalNetError(f"config file {str(path)!r} is not valid YAML ({str(e).splitlines()[0]})") from e
    if not isinstance(cfg, dict):
        raise RemovalNetError(f"config file {str(path)!r} must hold a mapping of option names to values")
    parser: argparse.ArgumentParser = args._parser
    dests = {a.dest for a in parser._actions}
    defaults = {}
    for key, value in cfg.items():
        dest = str(key).replace("-", "_")
        if dest not in dests or dest in ("config", "help"):
            raise RemovalNetError(f"config file {str(path)!r}: unknown option {key!r} for '{args.command}'")
        defaults[dest] = value
    parser.set_defaults(**defaults)
    return parser.parse_args(list(argv)[list(argv).index(args.command) + 1:], namespace=argparse.Namespace(
        command=args.command, _run=args._run, _parser=parser))


def _check_options(args: argparse.Namespace) -> None:
    """Every numeric option declared with a range (``type=Option(...)``), from the command line or a config file,
    checked in range before the command does anything (one line naming the option)."""
    for action in args._parser._actions:
        value = getattr(args, action.dest, None)
        if isinstance(action.type, Option) and value is not None:
            setattr(args, action.dest, action.type.check(action.option_strings[-1], value))


def _set_threads(n: int | None) -> None:
    if n is None and os.environ.get("REMOVALNET_THREADS"):
        try:
            n = int(os.environ["REMOVALNET_THREADS"])
        except ValueError:
            raise RemovalNetError(f"REMOVALNET_THREADS must be an integer, got {os.environ['REMOVALNET_THREADS']!r}")
    if n is None:
        return
    if n < 1:
        raise RemovalNetError(f"--threads must be >= 1, got {n}")
    import torch
    torch.set_num_threads(n)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO,
                        format="%(message)s")
    restore_warnings = _warnings_as_lines()
    try:
        args = _apply_config(args, argv)
        _check_options(args)
        _set_threads(args.threads)
        try:
            return int(args._run(args) or 0)
        except SystemExit as e:   # a command returns its status: an exit from inside it is the user's code's
            raise RemovalNetError(f"'{args.command}' stopped: code of yours that it ran (a model's forward, a "
                                  f"training function) called sys.exit({e.code!r})") from None
    except RemovalNetError as e:
        _close_progress_bars()
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _close_progress_bars()
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        restore_warnings()


if __name__ == "__main__":
    sys.exit(main())
