"""The package's structure, checked on its source with ``ast`` so it stays true (docs/architecture.md):

* the packages form layers and every import points down (no cycle between packages; experiment never imports
  studies: the studies plug into experiment's hooks);
* no module imports a private name (``_x``) from another package;
* no two modules import each other, directly or through a cycle (imports inside functions count too);
* no package-internal import inside a function, except one marked ``# lazy: <reason>`` (an optional
  dependency kept optional, or torch kept off the command line's start: see ``tests/test_cli_imports.py``);
* ``--list`` of attack, verify and study comes from the registries.
"""
import ast
from pathlib import Path

import pytest

import removalnet
from removalnet.cli import main
from removalnet.studies import list_studies
from removalnet.verify import list_verifiers

PKG = Path(removalnet.__file__).parent

#: the layers, bottom first; a package may import only from its own layer (acyclically) or below
LAYERS = [
    {"utils"},
    {"params", "registry"},
    {"models", "data", "train", "verify", "checkpoint", "guards"},
    {"attacks"},
    {"experiment"},
    {"report"},
    {"studies"},
    {"commands", "cli", "__main__", "__init__"},
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        parts = path.relative_to(PKG.parent).with_suffix("").parts
        is_pkg = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_pkg else parts)
        yield path, name, is_pkg, ast.parse(path.read_text())


def _unit(module: str) -> str:
    """The package (or top-level module) a ``removalnet.*`` module belongs to; ``__init__`` for the root."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports():
    """(path, line, importing module, imported module, names, inside a function, source line)."""
    for path, name, is_pkg, tree in _modules():
        lines = path.read_text().splitlines()
        parents = {c: p for p in ast.walk(tree) for c in ast.iter_child_nodes(p)}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[:len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                names = [a.name for a in node.names]
                if target == "removalnet":  # `from . import studies` at the root names a package, else the root
                    targets = [f"removalnet.{n}" if (PKG / n).is_dir() or (PKG / f"{n}.py").exists() else target
                               for n in names]
                else:
                    targets = [target]
            elif isinstance(node, ast.Import):
                targets, names = [a.name for a in node.names], []
            else:
                continue
            p, in_function = parents.get(node), False
            while p is not None and not in_function:
                in_function = isinstance(p, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                p = parents.get(p)
            for t in targets:
                if t == "removalnet" or t.startswith("removalnet."):
                    yield path, node.lineno, name, t, names, in_function, lines[node.lineno - 1]


def _edges():
    edges = {}
    for path, line, src, dst, _, _, _ in _imports():
        a, b = _unit(src), _unit(dst)
        if a != b:
            edges.setdefault((a, b), f"{path.name}:{line}")
    return edges


def test_every_package_is_in_a_layer():
    units = {_unit(name) for _, name, _, _ in _modules()}
    assert units <= set(LAYER), f"add {sorted(units - set(LAYER))} to LAYERS (and to docs/architecture.md)"


def test_imports_point_down_and_form_no_cycle():
    edges = _edges()
    up = [f"{a} -> {b} ({where})" for (a, b), where in edges.items() if LAYER[a] < LAYER[b]]
    assert not up, "imports against the layering: " + "; ".join(up)
    graph = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
    state = {}

    def visit(n, stack):
        state[n] = "open"
        for m in graph.get(n, ()):
            assert state.get(m) != "open", f"import cycle: {' -> '.join(stack + [n, m])}"
            if m not in state:
                visit(m, stack + [n])
        state[n] = "done"

    for n in list(graph):
        if n not in state:
            visit(n, [])



def _module_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (at its top or inside a function); ``from . import x`` of a
    submodule points at the submodule, not the package."""
    known = {name for _, name, _, _ in _modules()}
    graph: dict[str, set[str]] = {name: set() for name in known}
    for _, _, src, dst, names, _, _ in _imports():
        for target in [f"{dst}.{n}" if f"{dst}.{n}" in known else dst for n in names] or [dst]:
            if target in known and target != src:
                graph[src].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = stack[stack.index(v):]
            del stack[stack.index(v):]
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_two_modules_import_each_other():
    assert not _cycles(_module_graph()), "modules importing each other: " + "; ".join(
        " <-> ".join(c) for c in _cycles(_module_graph()))


def test_the_cycle_check_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert not _cycles({"a": {"b"}, "b": set()})
    graph = _module_graph()   # the graph sees both kinds of import: a top-level one and one inside a function
    assert "removalnet.data.info" in graph["removalnet.data.refs"]
    assert "removalnet.studies" in graph["removalnet.commands.report"]


def test_experiment_never_imports_studies():
    bad = [f"{p.name}:{line}" for p, line, src, dst, *_ in _imports()
           if _unit(src) == "experiment" and _unit(dst) == "studies"]
    assert not bad


def test_no_private_name_crosses_a_package():
    bad = [f"{p.relative_to(PKG)}:{line} imports {n} from {dst}" for p, line, src, dst, names, *_ in _imports()
           for n in names if _unit(src) != _unit(dst) and n.startswith("_") and not n.startswith("__")]
    assert not bad, bad


def test_no_package_internal_import_inside_a_function_unless_marked():
    bad = [f"{p.relative_to(PKG)}:{line}: {text.strip()}" for p, line, _, _, _, in_fn, text in _imports()
           if in_fn and "# lazy:" not in text]
    assert not bad, "hoist these imports (or mark an optional dependency with '# lazy: <reason>'): " + "; ".join(bad)


@pytest.mark.parametrize("command,names", [("verify", list_verifiers), ("study", list_studies)])
def test_list_comes_from_the_registry(command, names, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--list"])
    assert e.value.code == 0
    text = "\n" + capsys.readouterr().out
    for name in names():
        assert f"\n{name}: " in text
    assert "    batch_size: int in [1, inf] or None, default None: " in text if command == "verify" else "    seed: int" in text


def test_registry_helper_rejects_duplicates_and_lists_the_choices():
    from removalnet.registry import Registry
    from removalnet.studies import Study, register_study
    from removalnet.studies.substitute_size import SubstituteSize
    from removalnet.utils import RemovalNetError

    reg = Registry("widget")
    reg.add("a", 1)
    reg.add("a", 1)                                  # the same entry again (a re-imported module) is fine
    with pytest.raises(ValueError, match="widget 'a' registered twice"):
        reg.add("a", 2)
    with pytest.raises(RemovalNetError, match="unknown widget 'b'; known: a"):
        reg.get("b")

    class Clash(Study):
        name = SubstituteSize.name
    with pytest.raises(ValueError, match="registered twice"):   # studies now have the check the others had
        register_study(Clash)
