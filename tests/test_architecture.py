"""The package's house plan, read from its imports: no import circles, no private name used across modules,
no import that runs up or across the floors.

The imports are read with ``ast`` (nothing is run), including imports inside functions and under
``TYPE_CHECKING``: a circle hidden in a function is still a circle a reader has to untangle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mstoolkit"


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: Path, package: Path = PACKAGE) -> list[tuple[str, str | None]]:
    """(module, name) for every import of the package in ``path``; name is None for ``import module``."""
    here = module_name(path, package)
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names if alias.name.split(".")[0] == package.name]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".") if is_package else here.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != package.name:
                continue
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if (package.parent / (submodule.replace(".", "/") + ".py")).exists() or \
                        (package.parent / submodule.replace(".", "/") / "__init__.py").exists():
                    found.append((submodule, None))  # `from package import module`
                else:
                    found.append((source, alias.name))
    return found


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module → the package's modules it imports (a package's ``__init__`` counts as the package)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(package.rglob("*.py")):
        here = module_name(path, package)
        graph[here] = {source for source, _ in imported_names(path, package) if source != here}
    return graph


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in graph:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return circles


def private_imports(package: Path = PACKAGE) -> list[str]:
    """``importer: module._name`` for every private name one module takes from another."""
    found = []
    for path in sorted(package.rglob("*.py")):
        here = module_name(path, package)
        for source, name in imported_names(path, package):
            if name and name.startswith("_") and not name.startswith("__") and source != here:
                found.append(f"{here}: {source}.{name}")
    return found


def test_the_package_has_no_import_circles():
    circles = import_circles(import_graph())
    assert not circles, "import circles: " + "; ".join(" → ".join(c) for c in circles)


def test_no_module_imports_another_modules_private_names():
    found = private_imports()
    assert not found, "private names imported across modules (make them public where they live):\n" + "\n".join(found)


@pytest.fixture
def toy_package(tmp_path):
    """A package with a circle (a ↔ b, one import inside a function) and a private import."""
    package = tmp_path / "toy"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from .b import helper\n")
    (package / "b.py").write_text("def helper():\n    from .a import x\n\n_secret = 1\n")
    (package / "c.py").write_text("from toy.b import _secret\nfrom . import a\n")
    return package


def test_the_checks_find_a_circle_and_a_private_import(toy_package):
    graph = import_graph(toy_package)
    assert graph["toy.c"] == {"toy.b", "toy.a"}
    assert import_circles(graph) == [["toy.a", "toy.b"]]
    assert private_imports(toy_package) == ["toy.c: toy.b._secret"]


#: The floors of the house, lowest first. A module may import modules of its own room and of rooms on
#: lower floors, never of a room on its own floor or above (ARCHITECTURE.md draws it). The package root
#: (``mstoolkit/__init__``: the version and nothing else) is the ground under every room: any module may
#: read the version (importing any module imports the root first anyway), and the root imports nothing.
FLOORS = [
    {"mstoolkit"},
    {"data"},
    {"runtime", "display"},
    {"phantom", "preprocessing", "evaluation"},
    {"segmentation"},
    {"explain", "uncertainty", "longitudinal"},
    {"clinical"},
    {"course", "doctor", "cli"},
]


def room_of(module: str) -> str:
    """``mstoolkit.data.io`` → ``data``; ``mstoolkit.cli`` → ``cli``; ``mstoolkit`` → ``mstoolkit``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def upward_imports(graph: dict[str, set[str]], floors: list[set[str]] = FLOORS) -> list[str]:
    floor = {room: level for level, rooms in enumerate(floors) for room in rooms}
    found = []
    for module, targets in sorted(graph.items()):
        here = room_of(module)
        for target in sorted(targets):
            there = room_of(target)
            if there != here and floor.get(there, len(floors)) >= floor.get(here, -1):
                found.append(f"{module} → {target} ({here} may not import {there})")
    return found


def test_every_room_is_on_a_floor():
    rooms = {room_of(module) for module in import_graph()}
    assert rooms <= set().union(*FLOORS), f"rooms without a floor in FLOORS: {sorted(rooms - set().union(*FLOORS))}"


def test_rooms_import_only_from_lower_floors():
    found = upward_imports(import_graph())
    assert not found, "imports that run up or across the house:\n" + "\n".join(found)


def test_upward_imports_are_found():
    graph = {"mstoolkit.data.io": {"mstoolkit.segmentation.models"}, "mstoolkit.segmentation.models": {"mstoolkit.data.io"},
             "mstoolkit.explain.maps": {"mstoolkit.uncertainty.sampling"}}
    assert upward_imports(graph) == [
        "mstoolkit.data.io → mstoolkit.segmentation.models (data may not import segmentation)",
        "mstoolkit.explain.maps → mstoolkit.uncertainty.sampling (explain may not import uncertainty)"]
