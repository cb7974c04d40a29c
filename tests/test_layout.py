"""The house rules that keep core/ a plain library: no import cycles, no Streamlit, no jobs/, every module
documented, and the deprecated flag spellings still working."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "core"


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(path: Path) -> set[str]:
    """Modules of the project imported at module level (what runs on import, so what can cycle)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_core_has_no_import_cycle():
    modules = {_module(p): p for p in CORE.rglob("*.py")}
    graph = {m: {d for d in _top_level_imports(p) if d in modules and d != m} for m, p in modules.items()}
    # a package's __init__ is imported before any of its modules
    for m in list(graph):
        parent = m.rpartition(".")[0]
        if parent in graph and parent != "core":
            graph[m].add(parent)
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in graph[m]:
            if state.get(d) == 1:
                raise AssertionError(" -> ".join(stack[stack.index(d):] + [d]) if d in stack else f"{m} -> {d}")
            if d not in state:
                visit(d, stack + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_core_imports_neither_streamlit_nor_jobs():
    for p in CORE.rglob("*.py"):
        tree = ast.parse(p.read_text())
        for node in ast.walk(tree):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for name in names:
                assert not name.split(".")[0] in ("streamlit", "jobs", "pages"), f"{p.relative_to(ROOT)} imports {name}"


def test_every_module_says_what_it_is_for_and_stays_small():
    for p in list(CORE.rglob("*.py")) + list((ROOT / "jobs").glob("*.py")) + list((ROOT / "pages").glob("*.py")):
        if p.name == "__init__.py" and not p.read_text().strip():
            continue
        doc = ast.get_docstring(ast.parse(p.read_text()))
        assert doc, f"{p.relative_to(ROOT)} has no module docstring"
        assert len(p.read_text().splitlines()) <= 420, f"{p.relative_to(ROOT)} is over 420 lines"


def test_import_core_gives_a_notebook_the_public_api():
    import core

    for name in ("Workspace", "ingest_manifest", "run_loop", "find_slices", "select", "embed_split_images"):
        assert hasattr(core, name), name
    # the notebook's loop is the command line's: the error_sample split's failure, or else a found slice's
    from core.runner import dcd_jobs
    from core.scanner import loop

    assert core.run_loop is loop.run_loop
    assert "run_loop" in dcd_jobs._pipeline.__code__.co_names


@pytest.mark.slow
def test_a_renamed_flag_still_works_and_prints_its_new_spelling(tmp_path):
    from core.runner.command_line import parse_args
    from core.runner.registry import get_job

    opts = parse_args(get_job("select"), ["--workspace", "w", "--k", "7"]).options
    assert opts.neighbours == 7
    opts = parse_args(get_job("slices"), ["--workspace", "w", "--k", "4", "--method", "integrated_gradients"]).options
    assert opts.slices == 4 and opts.attribution == "integrated_gradients"
    opts = parse_args(get_job("predict"), ["--workspace", "w", "--model-id", "m1", "--splits", "test,train"]).options
    assert opts.classifier_id == "m1" and opts.splits == ("test", "train")
    out = subprocess.run([sys.executable, "-m", "jobs.select", "--workspace", str(tmp_path / "none"), "--k", "3"],
                         cwd=ROOT, capture_output=True, text=True)
    assert "--k is deprecated for jobs.select; use --neighbours" in out.stderr
    assert out.returncode == 2 and "does not exist" in out.stderr


@pytest.mark.parametrize("kind", ["select", "slices", "pipeline", "demo", "retrain"])
def test_help_lists_each_flag_once_and_hides_the_old_spellings(kind):
    from core.runner.command_line import build_parser
    from core.runner.registry import get_job

    text = build_parser(get_job(kind)).format_help()
    for o in get_job(kind).options:
        assert o.flag in text
        for alias in o.aliases:
            assert f"{alias} " not in text.replace(o.flag, "")
