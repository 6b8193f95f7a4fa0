"""The layering rules of docs/DESIGN.md, checked on the import graph.

Every ``import`` in appliance/ (at module level or inside a function) is
read with ast; a rule broken anywhere fails here, naming the module and
the import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "appliance"

def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """module -> every appliance module it imports (``from a import b`` counts
    as importing ``a.b`` too, since b may be a submodule)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        module = _module_name(path)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[:len(anchor) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names)
        graph[module] = {m for m in found if m == "appliance" or m.startswith("appliance.")}
    return graph


GRAPH = _imports()


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _violations(rule) -> list[str]:
    return sorted(f"{m} imports {i}" for m, imports in GRAPH.items() for i in imports if rule(m, i))


def test_the_graph_was_read():
    assert "appliance.store.archive" in GRAPH and "appliance.web.qido" in GRAPH
    assert "appliance.store.index" in GRAPH["appliance.store.archive"]


def test_the_store_is_the_only_door():
    def rule(module: str, imported: str) -> bool:
        insides = _within(imported, "appliance.store.index") or _within(imported, "appliance.store.blobs")
        return insides and not _within(module, "appliance.store")
    assert _violations(rule) == []


@pytest.mark.parametrize("a, b", [("appliance.dicom", "appliance.web"),
                                  ("appliance.web", "appliance.dicom")])
def test_protocol_adapters_do_not_import_each_other(a, b):
    assert _violations(lambda m, i: _within(m, a) and _within(i, b)) == []


def test_nothing_imports_the_composition_root_or_the_cli():
    allowed = {"appliance.__main__": {"appliance.cli"}, "appliance.cli": {"appliance.daemon"}}

    def rule(module: str, imported: str) -> bool:
        top = imported in ("appliance.daemon", "appliance.cli")
        return top and imported not in allowed.get(module, set()) and module != imported
    assert _violations(rule) == []


@pytest.mark.parametrize("pure", ["appliance.dicomfile", "appliance.query"])
def test_pure_packages_import_only_themselves(pure):
    def rule(module: str, imported: str) -> bool:
        return (_within(module, pure) and imported != "appliance"
                and not _within(imported, pure)
                and not _within(imported, "appliance.dicomfile"))
    assert _violations(rule) == []


def test_tests_do_not_import_the_benchmarks():
    """Shared test data lives in tests/synthetic.py and tests/support.py; the
    benchmarks may import them, never the other way round (issue 11.9)."""
    tests = PACKAGE.parent / "tests"
    offenders = []
    for path in tests.rglob("*.py"):
        if (tests / "bench") in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            offenders += [f"{path.relative_to(tests)} imports {n}" for n in names
                          if n == "tests.bench" or n.startswith("tests.bench.")]
    assert offenders == []
