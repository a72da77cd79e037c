"""The docs site's CLI reference, generated from the argparse parsers (never written by hand).

An mkdocs hook (``hooks:`` in mkdocs.yml): in ``docs/cli.md`` the line ``<!-- cli-reference -->`` becomes one
section per subcommand with its ``--help`` text and, for the commands that have ``--list``, the registry listing
that ``--list`` prints. ``cli_reference()`` is the page's text (tests/test_doc_commands.py checks it names every
subcommand and option).
"""
from __future__ import annotations

import argparse
import os

MARKER = "<!-- cli-reference -->"
WIDTH = "100"


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommands' parsers by name, in the order of ``removalnet --help``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _fence(text: str) -> str:
    return f"```text\n{text.rstrip()}\n```\n"


def cli_reference() -> str:
    from removalnet.cli import build_parser

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH          # argparse wraps help at the terminal width: fix it for the page
    try:
        parser = build_parser()
        out = ["## removalnet", "", _fence(parser.format_help())]
        for name, sub in subcommands(parser).items():
            out += [f"## removalnet {name}", "", _fence(sub.format_help())]    # the help holds the description
            for action in sub._actions:
                make = getattr(action, "make", None)      # --list: generated from the registry
                if callable(make):
                    out += [f"`removalnet {name} --list` prints:", "", _fence(make())]
        return "\n".join(out)
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, cli_reference())
    return markdown
