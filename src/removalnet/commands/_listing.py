"""``--list`` of the commands whose argument names a registry entry (attack, verify, study): generated from the
registry, each entry with its one-line doc and its parameters."""
from __future__ import annotations

import argparse
from typing import Any, Callable, Iterable, Mapping

from ..params import describe_params
from ..registry import first_line

__all__ = ["listing", "add_list_option"]


def listing(kind: str, entries: Iterable[tuple[str, Any, Mapping[str, Any]]]) -> str:
    """``entries``: (name, its description or the class whose docstring's first line describes it, parameters)."""
    lines = []
    for name, obj, params in entries:
        doc = obj if isinstance(obj, str) else first_line(obj.__doc__)
        lines.append(f"{name}: {doc or '(no description)'}")
        lines += [f"    {line}" for line in describe_params(params)] or ["    (no parameters)"]
    return "\n".join(lines) if lines else f"no {kind} is registered"


class _ListAction(argparse.Action):
    def __init__(self, option_strings, dest, make: Callable[[], str], **kw):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kw)
        self.make = make

    def __call__(self, parser, namespace, values, option_string=None):
        print(self.make())
        parser.exit()


def add_list_option(p: argparse.ArgumentParser, kind: str, make: Callable[[], str]) -> None:
    """``--list``: print every registered ``kind`` with its doc line and parameters, and exit."""
    p.add_argument("--list", action=_ListAction, make=make,
                   help=f"list every registered {kind} with its parameters and exit")
