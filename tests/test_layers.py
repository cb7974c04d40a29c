"""The library's layers (docs/architecture.md): each module imports only its own layer and the ones below,
function-local imports included, and no modules of core/ and jobs/ import each other in a circle (function-local
imports and imports under ``if TYPE_CHECKING`` count too: every import statement anywhere in a module is an
edge)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The packages whose modules the import graph holds.
PACKAGES = ("core", "jobs")
#: Lowest first; a module may import from its own layer and those before it. app and runner share the top of
#: core; the commands (jobs/) stand on it.
LAYERS = (("core.progress", "core.constants"), ("core.store",), ("core.data",), ("core.engines",), ("core.models",),
          ("core.dcd",), ("core.scanner",), ("core.scenarios",), ("core.app", "core.runner"), ("jobs",))


def _modules() -> dict[str, Path]:
    """module name -> file, for core/ and jobs/."""
    out = {}
    for path in [*(ROOT / "core").rglob("*.py"), *(ROOT / "jobs").rglob("*.py")]:
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the modules of core/ and jobs/ it imports anywhere in its body (``from core.x import y`` counts
    as ``core.x.y`` where that is a module)."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] in PACKAGES:
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    graph[name].add(sub if sub in mods else node.module)
            elif isinstance(node, ast.Import):
                graph[name] |= {a.name for a in node.names if a.name in mods}
    return graph


def layer_of(module: str) -> int:
    for i, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    return -1  # the package facade (core/__init__.py), imported lazily by name only


def circles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(group)

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def test_no_module_imports_from_a_higher_layer():
    graph = import_graph()
    upward = sorted(f"{m} -> {t}" for m, targets in graph.items() for t in targets
                    if layer_of(m) >= 0 and layer_of(t) > layer_of(m))
    assert not upward, "imports that climb a layer:\n" + "\n".join(upward)


def test_the_base_imports_nothing_of_core():
    graph = import_graph()
    assert graph["core.progress"] == set() and graph["core.constants"] == set()


def test_no_import_circle():
    """Not one, however long: the job registry gathers the job modules, which import only what lies below it
    (core.runner.jobspec, options, configs, command_line, processes), never the registry, the launcher or
    the command that reads it."""
    found = circles(import_graph())
    assert found == [], "import circles:\n" + "\n".join(" <-> ".join(sorted(g)) for g in found)


def test_the_graph_holds_the_commands_and_the_runner_edges():
    graph = import_graph()
    assert "core.runner.cli" in graph["jobs.demo"]
    assert {"core.runner.dcd_jobs", "core.runner.scenario_jobs"} <= graph["core.runner.registry"]
    assert "core.runner.registry" not in graph["core.runner.scenario_jobs"]


def test_the_checks_see_function_local_imports_and_circles():
    """The checker itself: a function-local import is an edge, and a two-module loop is found."""
    graph = import_graph()
    assert "core.dcd.label_issues" in graph["core.dcd.strategies"]  # imported inside _flagged only
    assert circles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [{"a", "b"}]
