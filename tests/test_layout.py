"""The architecture's import rules and size limits, read from the source (no imports run)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "genexp"

# package -> the genexp packages it must never import
RULES = {
    "report": ("genexp.compression",),
    "compression": ("genexp.report",),
    "models": ("genexp.report", "genexp.compression", "genexp.deploy"),
    "deploy": ("genexp.compression", "genexp.report", "genexp.models", "lightning"),
}


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, at top level or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


@pytest.mark.parametrize("package", sorted(RULES))
def test_import_rules(package: str) -> None:
    broken = [
        f"{path.relative_to(SRC)} imports {module}"
        for path in sorted((SRC / package).rglob("*.py"))
        for module in sorted(imports_of(path))
        if module.startswith(RULES[package])
    ]
    assert not broken, broken


def test_the_rule_reader_sees_function_level_imports(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from genexp.compression.prune import PruningCallback\n")
    assert "genexp.compression.prune" in imports_of(source)


def test_no_source_file_over_400_lines() -> None:
    long = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py") if (n := len(p.read_text().splitlines())) >= 400}
    assert not long, long


def test_one_door_back_from_disk() -> None:
    """Only genexp.checkpoints.rebuild (and the artifact reader it uses) calls torch.load on what a run wrote."""
    loaders = sorted(
        str(p.relative_to(SRC))
        for p in SRC.rglob("*.py")
        if "torch.load(" in p.read_text()
    )
    assert loaders == ["checkpoints/rebuild.py", "deploy/artifact.py", "metrics/features.py"], loaders
