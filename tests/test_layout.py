"""The architecture's import rules and size limits, read from the source (no imports run)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "genexp"

ENTRY_POINTS = ("train", "evaluate", "export", "optimize")  # the top level: these and packages, nothing else
_ENTRIES = tuple(f"genexp.{name}" for name in ENTRY_POINTS)
_PACKAGES = tuple(sorted(p.name for p in SRC.iterdir() if (p / "__init__.py").is_file()))


def _only(*allowed: str) -> tuple[str, ...]:
    """Rules for a foundation package: every genexp package but ``allowed`` (and no entry point)."""
    return tuple(f"genexp.{p}" for p in _PACKAGES if p not in allowed) + _ENTRIES


# package -> the modules it must never import (a prefix match); every package has an entry.
# DESIGN.md: report never imports compression; compression never imports report; models import neither, nor
# deploy; deploy imports no callback and no model family; only the entry points compose everything.
RULES = {
    "report": ("genexp.compression", "genexp.callbacks", *_ENTRIES),
    "compression": ("genexp.report", "genexp.callbacks", *_ENTRIES),
    "models": _only("runtime", "checks", "checkpoints", "data", "models"),
    "deploy": _only("runtime", "checks", "checkpoints", "deploy") + ("lightning",),
    "exporters": _only("runtime", "deploy", "models", "exporters"),
    "checkpoints": _only("runtime", "checks", "deploy", "models", "checkpoints"),
    "runtime": _only("runtime", "checks", "deploy", "models", "callbacks", "metrics", "optim"),
    "callbacks": _only("runtime", "checks", "metrics", "deploy", "callbacks"),
    # the foundations: values and errors, data, offline metrics, optimizers
    "checks": _only("runtime", "deploy", "optim", "checks"),
    "data": _only("runtime", "checks", "data"),
    "metrics": _only("runtime", "checks", "metrics"),
    "optim": _only("runtime", "optim"),
    # the search composes everything (DESIGN.md: only the entry points and search/), but no entry point
    "search": _ENTRIES,
}
# models import checkpoints.resize (a pruned checkpoint's widths), never the loader that builds models
RULES["models"] += ("genexp.checkpoints.rebuild",)


def module_name(path: Path) -> str:
    """``src/genexp/a/b.py`` -> ``genexp.a.b`` (a package's ``__init__.py`` -> the package)."""
    parts = ("genexp", *path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, at top level or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_the_top_level_holds_entry_points_and_packages() -> None:
    loose = sorted(
        p.name
        for p in SRC.iterdir()
        if p.suffix == ".py" and p.stem not in (*ENTRY_POINTS, "__init__", "__main__")
    )
    assert not loose, f"modules outside a package: {loose}"


def test_every_package_has_import_rules() -> None:
    assert list(_PACKAGES) == sorted(RULES), "give a new package its line in RULES"


@pytest.mark.parametrize("package", sorted(RULES))
def test_import_rules(package: str) -> None:
    broken = [
        f"{path.relative_to(SRC)} imports {module}"
        for path in sorted((SRC / package).rglob("*.py"))
        for module in sorted(imports_of(path))
        if any(module == rule or module.startswith(rule + ".") for rule in RULES[package])
    ]
    assert not broken, broken


def test_the_rule_reader_sees_function_level_imports(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from genexp.compression.prune import PruningCallback\n")
    assert "genexp.compression.prune" in imports_of(source)


def import_graph() -> dict[str, set[str]]:
    """genexp module -> the genexp modules it imports (``from pkg import submodule`` counts as the submodule)."""
    modules = {module_name(p): p for p in SRC.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        found = imports_of(path)
        tree = ast.parse(path.read_text())
        found |= {
            f"{node.module}.{alias.name}"
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
            for alias in node.names
        }
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle a depth-first walk of ``graph`` meets (each as its modules, first repeated last)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []
    found: list[list[str]] = []

    def walk(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                found.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                walk(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            walk(node)
    return found


def test_no_import_circles() -> None:
    """No genexp module imports itself back through others (function-level imports count too)."""
    assert not circles(import_graph()), circles(import_graph())


def test_the_circle_finder_finds_one() -> None:
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_source_file_over_400_lines() -> None:
    long = {
        str(p.relative_to(SRC)): n for p in SRC.rglob("*.py") if (n := len(p.read_text().splitlines())) >= 400
    }
    assert not long, long


def test_one_door_back_from_disk() -> None:
    """Only genexp.checkpoints.torch_file (for rebuild.py and the artifact reader) calls torch.load on what a run
    wrote (metrics/features.py loads its own bundled classifier)."""
    loaders = sorted(str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if "torch.load(" in p.read_text())
    assert loaders == ["checkpoints/torch_file.py", "metrics/features.py"], loaders
