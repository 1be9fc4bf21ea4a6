"""Layout rules of docs/design.md that code review alone would let slip: pipelines never import each
other, one gather_rows, one module per data format that registers itself."""
from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import facekd

ROOT = Path(facekd.__file__).parent
PIPELINES = ("train", "distill", "classify")


def _imported_modules(path: Path) -> set[str]:
    """Every module a file imports (absolute names; ``from . import x`` resolved inside its package)."""
    package = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    return names


def test_pipelines_never_import_each_other() -> None:
    for name in PIPELINES:
        imported = _imported_modules(ROOT / "pipelines" / f"{name}.py")
        others = {f"facekd.pipelines.{o}" for o in PIPELINES + ("demo",) if o != name}
        assert not imported & others, f"pipelines/{name}.py imports {sorted(imported & others)}"


def test_one_gather_rows_and_partial_fc_in_its_own_module() -> None:
    defined = {str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py")
               if any(isinstance(n, ast.FunctionDef) and n.name.lstrip("_") == "gather_rows"
                      for n in ast.walk(ast.parse(p.read_text())))}
    assert defined == {"engine/distributed.py"}
    from facekd.models.heads import PartialFC
    assert PartialFC.__module__ == "facekd.models.partial_fc"


def test_every_data_format_module_registers_a_source() -> None:
    from facekd.data.sources import DATA_SOURCES

    DATA_SOURCES.load()
    modules = {e.value.__module__ for e in DATA_SOURCES.entries()}
    package = importlib.import_module("facekd.data.formats")
    for info in pkgutil.iter_modules(package.__path__):
        assert f"facekd.data.formats.{info.name}" in modules, f"formats/{info.name}.py registers no source"
