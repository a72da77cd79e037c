"""Every shell command shown in README.md and docs/ runs, and the generated CLI reference is complete.

The convention (docs/architecture.md, "Documentation"): fenced blocks tagged ``bash``, ``sh``, ``shell`` or
``console``, and untagged blocks with ``$ `` prompts, are commands. In a block with ``$ `` prompts only those
lines (and their ``\\`` continuations) are commands, the rest is output; otherwise every line but blank lines
and ``#`` comments is. An HTML comment right before a block says how the test runs it, one directive a line:

- ``skip: REASON``: not run (``make`` targets: CI runs them directly);
- ``dry-run``: each command runs with ``--dry-run`` (the data or the time it needs is not here);
- ``help``: each command runs with ``--help`` (likewise);
- ``sub: OLD => NEW``: text replaced before running (a smaller size); OLD ending in ``$`` matches at the end
  of a command only; a ``sub`` that matches nothing fails the test;
- ``file: NAME``: the block (a YAML spec, a Python file) is written to NAME for the blocks after it;
- ``note: ...``: a remark.

Each document runs in a folder of its own, its blocks in order, holding the files the docs assume:
``mymodel.py`` (a LeNet), ``model.pt``, ``suspect.pt``, ``ref0.pt``..``ref2.pt`` (its state dicts), the image
folders ``digits/`` and ``fmnist/`` (scikit-learn's digits at 28 x 28 under both names: 60 training and 20
test images per class), and links to the repository's ``configs/``, ``benchmarks/`` and ``.venv``.
``removalnet`` commands run in this process (``removalnet.cli.main``), any other block as one bash script.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from removalnet.cli import build_parser, main
from helpers import LENET, user_lenet

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))
SHELL = {"bash", "sh", "shell", "console"}
DIRECTIVES = {"skip", "dry-run", "help", "sub", "file", "note"}
_FENCE = re.compile(r"^(```+|~~~+)\s*([\w-]*)")
_MARK = re.compile(r"^<!--\s*test:(.*?)-->", re.S | re.M)    # at the start of a line (not in inline code)


@dataclass
class Block:
    doc: Path
    line: int                                            # 1-based line of the opening fence
    lang: str
    text: str
    directives: list[tuple[str, str]] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"

    def get(self, key: str) -> list[str]:
        return [v for k, v in self.directives if k == key]

    @property
    def prompted(self) -> bool:
        return any(ln.startswith("$ ") for ln in self.text.splitlines())

    @property
    def runnable(self) -> bool:
        return self.lang in SHELL or (self.lang == "" and self.prompted)


def _directives(comment: str, where: str) -> list[tuple[str, str]]:
    out = []
    for raw in comment.strip().splitlines():
        raw = raw.strip()
        if not raw:
            continue
        key, _, value = raw.partition(":")
        key = key.strip()
        if key not in DIRECTIVES:
            raise AssertionError(f"{where}: unknown test directive {raw!r} (known: {', '.join(sorted(DIRECTIVES))})")
        out.append((key, value.strip()))
    return out


def parse_blocks(doc: Path) -> list[Block]:
    """The fenced blocks of a Markdown file, each with the directives of a ``<!-- test: -->`` right before it."""
    lines = doc.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = _FENCE.match(lines[i].strip())
        if not m:
            i += 1
            continue
        fence, lang, start = m.group(1), m.group(2).lower(), i
        body = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        block = Block(doc, start + 1, lang, "\n".join(body) + "\n")
        before = "\n".join(lines[:start]).rstrip()       # the comment ends right before the fence
        if before.endswith("-->"):
            mark = list(_MARK.finditer(before))
            if mark and mark[-1].end() == len(before):
                block.directives = _directives(mark[-1].group(1), block.where)
        blocks.append(block)
        i += 1
    return blocks


def commands(block: Block) -> list[str]:
    """The block's commands, continuation lines joined."""
    out, cur = [], None
    for ln in block.text.splitlines():
        if cur is not None:                               # a continued command
            cur += " " + ln.strip()
        elif block.prompted:
            if not ln.startswith("$ "):
                continue                                  # output
            cur = ln[2:].strip()
        else:
            if not ln.strip() or ln.lstrip().startswith("#"):
                continue
            cur = ln.strip()
        if cur.endswith("\\"):
            cur = cur[:-1].rstrip()
        else:
            out.append(cur)
            cur = None
    if cur is not None:
        out.append(cur)
    return out


def substitute(block: Block, items: list[str]) -> list[str]:
    for sub in block.get("sub"):
        old, sep, new = sub.partition("=>")
        assert sep, f"{block.where}: sub needs OLD => NEW, got {sub!r}"
        old, new = old.strip(), new.strip()
        pattern = re.escape(old[:-1]) + "$" if old.endswith("$") else re.escape(old)
        hits = [bool(re.search(pattern, it, re.M)) for it in items]
        assert any(hits), f"{block.where}: sub {old!r} matches nothing in the block"
        items = [re.sub(pattern, lambda _: new, it, flags=re.M) for it in items]
    return items


def _argv(block: Block, cmd: str) -> list[str]:
    argv = shlex.split(cmd)
    keys = {k for k, _ in block.directives}
    if "help" in keys:
        argv.append("--help")
    elif "dry-run" in keys and "--dry-run" not in argv:
        argv.append("--dry-run")
    return argv


def run_doc(doc: Path, work: Path, capsys) -> int:
    """Runs every command of ``doc`` in ``work``; returns how many ran."""
    ran = 0
    for block in parse_blocks(doc):
        if block.get("file"):
            (text,) = substitute(block, [block.text])
            (work / block.get("file")[0]).write_text(text)
            continue
        if not block.runnable:
            assert not block.directives, f"{block.where}: test directives on a block that is not run ({block.lang})"
            continue
        if block.get("skip"):
            assert block.get("skip")[0], f"{block.where}: skip needs a reason"
            continue
        cmds = substitute(block, [shlex.join(shlex.split(c, comments=True)) for c in commands(block)])
        assert cmds, f"{block.where}: a shell block without commands"
        argvs = [_argv(block, c) for c in cmds]
        if all(a and a[0] == "removalnet" for a in argvs):
            for cmd, argv in zip(cmds, argvs):
                try:
                    rc = main(argv[1:])
                except SystemExit as e:                    # --help, argparse errors
                    rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
                err = capsys.readouterr().err
                assert rc == 0, f"{block.where}: `{shlex.join(argv)}` exited {rc}:\n{err[-2000:]}"
                ran += 1
        else:
            script = "set -e\n" + "\n".join(shlex.join(a) for a in argvs)
            venv_bin = Path(sys.executable).parent
            env = {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
                   "REMOVALNET_THREADS": "1", "OMP_NUM_THREADS": "1"}
            p = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=600)
            assert p.returncode == 0, (f"{block.where}: the block exited {p.returncode}:\n{script}\n"
                                       f"{(p.stdout + p.stderr)[-2000:]}")
            ran += len(argvs)
    return ran


# ------------------------------------------------------------------------------------------------ fixtures
def _fit(net, x, y, steps: int = 15):
    """A few full-batch SGD steps in plain PyTorch, as a user trains their own model."""
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        return loss

    for _ in range(steps):
        opt.step(closure)
    return net.eval()


@pytest.fixture(scope="module")
def user_files(tmp_path_factory):
    """The files the docs assume a user has (see the module docstring)."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("docfiles")
    (root / "mymodel.py").write_text(LENET)
    d = load_digits()
    imgs = np.stack([np.asarray(Image.fromarray((im * 255 / 16).astype(np.uint8)).resize((28, 28)))
                     for im in d.images])
    count = {}
    for i, (im, y) in enumerate(zip(imgs, d.target)):
        n = count.get(int(y), 0)
        if n >= 80:
            continue
        count[int(y)] = n + 1
        split = "test" if n < 20 else "train"
        (root / "digits" / split / str(y)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(root / "digits" / split / str(y) / f"{i}.png")
    shutil.copytree(root / "digits", root / "fmnist")
    x = torch.from_numpy(imgs[:600]).float().unsqueeze(1) / 255
    y = torch.from_numpy(d.target[:600])
    for seed, name in enumerate(("model.pt", "suspect.pt", "ref0.pt", "ref1.pt", "ref2.pt")):
        torch.save(_fit(user_lenet(root / "mymodel.py", seed=seed), x, y).state_dict(), root / name)
    for name in ("configs", "benchmarks"):
        (root / name).symlink_to(ROOT / name)
    (root / ".venv").symlink_to(Path(sys.prefix) if sys.prefix != sys.base_prefix else ROOT / ".venv")
    return root


@pytest.fixture
def work(user_files, tmp_path, monkeypatch):
    dst = tmp_path / "work"
    shutil.copytree(user_files, dst, symlinks=True)
    monkeypatch.chdir(dst)
    monkeypatch.setenv("REMOVALNET_THREADS", "1")
    return dst


# ------------------------------------------------------------------------------------------------ tests
def _runnable_docs():
    return [d for d in DOCS if any(b.runnable or b.get("file") for b in parse_blocks(d))]


@pytest.mark.parametrize("doc", _runnable_docs(), ids=lambda d: str(d.relative_to(ROOT)))
def test_doc_commands_run(doc, work, capsys):
    assert run_doc(doc, work, capsys) > 0 or all(b.get("skip") for b in parse_blocks(doc) if b.runnable)


def test_every_command_block_is_run_or_marked():
    """Untagged blocks that look like commands must say what they are (bash to run them, text for a synopsis);
    directives must stand before a block; skips need a reason."""
    for doc in DOCS:
        for block in parse_blocks(doc):
            if block.lang == "" and not block.prompted:
                first = next((ln for ln in block.text.splitlines() if ln.strip()), "")
                assert not first.startswith(("removalnet ", "make ", "python ")), \
                    f"{block.where}: an untagged block of commands: tag it bash (run) or text (a synopsis)"
            for reason in block.get("skip"):
                assert reason, f"{block.where}: skip needs a reason"
        text = doc.read_text()
        marks = len(_MARK.findall(text))
        attached = sum(1 for b in parse_blocks(doc) if b.directives)
        assert marks == attached, f"{doc.relative_to(ROOT)}: a <!-- test: --> comment that stands before no block"


def test_readme_and_docs_show_commands():
    """The convention finds the commands: the README's tour, the install page and the guide are run."""
    readme = [c for b in parse_blocks(ROOT / "README.md") if b.runnable and not b.get("skip") for c in commands(b)]
    assert any(c.startswith("removalnet audit") for c in readme)
    assert any(c.startswith("removalnet run configs/paper/") for c in readme)
    assert "python tour.py" in readme
    assert len(_runnable_docs()) >= 6


def test_cli_reference_lists_every_subcommand_and_option():
    spec = importlib.util.spec_from_file_location("docs_cli", ROOT / "scripts" / "docs_cli.py")
    docs_cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(docs_cli)
    page = docs_cli.cli_reference()
    subs = docs_cli.subcommands(build_parser())
    assert {"audit", "run", "train", "attack", "verify", "report", "study"} <= set(subs)
    for name, parser in subs.items():
        assert f"## removalnet {name}\n" in page, name
        section = page.split(f"## removalnet {name}\n", 1)[1].split("\n## removalnet ", 1)[0]
        for action in parser._actions:
            for opt in action.option_strings:
                assert re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", section), f"{name}: {opt} missing"
    for kind in ("attack", "verify", "study"):          # the registries' listings
        assert f"`removalnet {kind} --list` prints:" in page
    assert "removalnet-plus:" in page and "deepjudge:" in page and "substitute_size:" in page
    assert "<!-- cli-reference -->" in (ROOT / "docs" / "cli.md").read_text()


def test_readme_results_are_copied_from_their_results_file():
    """The README's Results table: every cell is the cell of the same row and column of the file it cites."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Results", 1)[1].split("\n## ", 1)[0]
    cited = re.search(r"\]\((benchmarks/results/[\w.-]+\.md)\)", section).group(1)
    source = (ROOT / cited).read_text().split("## Table 1:", 1)[1].split("\n### ", 1)[0]

    def rows(text):
        lines = [ln for ln in text.splitlines() if ln.startswith("|")]
        head = [c.strip() for c in lines[0].strip("|").split("|")]
        return head, {r[0]: dict(zip(head, r)) for r in
                      ([c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:])}
    head, shown = rows(section)
    _, full = rows(source)
    assert len(shown) >= 5
    for attack, row in shown.items():
        for col in head:
            assert full[attack][col] == row[col], (attack, col)
