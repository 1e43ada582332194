"""The package's structure, checked from the source (docs/design.md, "Layers" and "One vocabulary").

- ``cluster/`` is in layers; a module imports only from its own layer or below, lazily or not.
- Across packages the arrows point ``cluster -> nodes -> aggregator``.
- No module reaches into another's private names (``from .x import _y``, ``x._y``).
- The words of the product (deletion modes, request steps, operation states) are spelled once, in
  ``cluster/vocabulary.py``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from ostracon.cluster.vocabulary import DeletionMode, OperationState, RequestStep

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"aggregator": ROOT / "aggregator", "nodes": ROOT / "nodes", "cluster": ROOT / "cluster"}
# ostracon.<package> may import ostracon.<these>
PACKAGE_DEPENDENCIES = {"aggregator": set(), "nodes": {"aggregator"}, "cluster": {"aggregator", "nodes", "v1"}}

# cluster/, bottom to top: each entry may import itself and the entries before it.
CLUSTER_LAYERS: list[set[str]] = [
    {"errors", "vocabulary", "faults"},
    {"config"},
    {"storage"},
    {"execution"},
    {"unlearning"},
    {"coordinator"},
    {"service"},
    {"cli", "demo", "config_reference", "__init__", "__main__"},
]


def layer_of(part: str) -> int:
    for index, names in enumerate(CLUSTER_LAYERS):
        if part in names:
            return index
    raise AssertionError(f"cluster/{part} is in no layer: add it to CLUSTER_LAYERS and docs/design.md")


def python_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def module_name(package: str, root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["ostracon", package, *parts])


def imports(package: str, root: Path, path: Path) -> Iterator[tuple[int, str, list[str]]]:
    """(line, absolute module imported, names taken from it) for every import in the file, lazy ones too."""
    here = module_name(package, root, path).split(".")
    base = here if path.name == "__init__.py" else here[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[:len(base) - (node.level - 1)]
                target = ".".join(anchor + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield node.lineno, target, [a.name for a in node.names]


def cluster_part(module: str) -> str | None:
    """The top-level entry of cluster/ that ``module`` is in (``ostracon.cluster.storage.ledger`` -> storage)."""
    parts = module.split(".")
    if parts[:2] != ["ostracon", "cluster"]:
        return None
    return parts[2] if len(parts) > 2 else "__init__"


def upward_imports(root: Path) -> list[str]:
    """Imports from a higher layer than the importing module's, in the cluster package at ``root``."""
    found = []
    for path in python_files(root):
        own = cluster_part(module_name("cluster", root, path))
        assert own is not None
        for line, target, names in imports("cluster", root, path):
            targets = [target]
            if target == "ostracon.cluster":  # `from .. import faults` names modules
                targets = [f"ostracon.cluster.{n}" for n in names]
            for t in targets:
                part = cluster_part(t)
                if part is not None and layer_of(part) > layer_of(own):
                    found.append(f"{path}:{line} ({own}) imports {t} ({part})")
    return found


def wrong_package_imports(package: str, root: Path) -> list[str]:
    found = []
    for path in python_files(root):
        for line, target, _ in imports(package, root, path):
            parts = target.split(".")
            if parts[0] == "ostracon" and len(parts) > 1 and parts[1] != package \
                    and parts[1] not in PACKAGE_DEPENDENCIES[package]:
                found.append(f"{path}:{line} imports {target}")
    return found


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(folder: Path, in_package: bool) -> list[str]:
    """``from .x import _y`` and ``x._y`` on an imported ostracon module: both reach into another module."""
    found = []
    for path in python_files(folder):
        tree = ast.parse(path.read_text(), str(path))
        modules: set[str] = set()  # local names bound to what was imported from ostracon
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                if (node.level > 0 and in_package) or (node.module or "").startswith("ostracon"):
                    for alias in node.names:
                        if _private(alias.name):
                            found.append(f"{path}:{node.lineno} imports {alias.name}")
                        modules.add(alias.asname or alias.name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("ostracon"):
                        modules.add(alias.asname or alias.name.split(".")[0])
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _private(node.attr) and isinstance(node.value, ast.Name) \
                    and node.value.id in modules:
                found.append(f"{path}:{node.lineno} uses {node.value.id}.{node.attr}")
    return found


WORDS = {m.value: f"{type(m).__name__}.{m.name}" for enum in (DeletionMode, RequestStep, OperationState) for m in enum}


def _keys_and_docstrings(tree: ast.AST) -> set[int]:
    """ids of the constants that are dict keys, subscripts, ``.get`` keys or docstrings: field names and
    prose, not words."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            skip.update(id(k) for k in node.keys if k is not None)
        elif isinstance(node, ast.Subscript):
            skip.add(id(node.slice))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
                and node.args:
            skip.add(id(node.args[0]))  # mapping.get("field")
        elif isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                skip.add(id(first.value))
    return skip


def vocabulary_literals(root: Path) -> list[str]:
    """String constants spelling a mode, step or state anywhere but ``vocabulary.py``."""
    found = []
    for path in python_files(root):
        if path.name == "vocabulary.py":
            continue
        tree = ast.parse(path.read_text(), str(path))
        skip = _keys_and_docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in WORDS \
                    and id(node) not in skip:
                found.append(f"{path}:{node.lineno} spells {node.value!r}: use {WORDS[node.value]}")
    return found


def test_every_cluster_entry_has_a_layer():
    for entry in PACKAGES["cluster"].iterdir():
        if entry.suffix == ".py" or (entry.is_dir() and (entry / "__init__.py").exists()):
            layer_of(entry.stem)


def test_cluster_imports_point_down_the_layers():
    found = upward_imports(PACKAGES["cluster"])
    assert not found, 'imports up the layers (docs/design.md, "Layers"):\n' + "\n".join(found)


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_packages_depend_cluster_nodes_aggregator(package):
    found = wrong_package_imports(package, PACKAGES[package])
    assert not found, "imports against cluster -> nodes -> aggregator:\n" + "\n".join(found)


@pytest.mark.parametrize("folder", ["aggregator", "nodes", "cluster", "bench", "examples"])
def test_no_private_names_across_modules(folder):
    found = private_uses(ROOT / folder, in_package=folder in PACKAGES)
    assert not found, "private names used across modules:\n" + "\n".join(found)


def test_the_vocabulary_is_spelled_once():
    found = vocabulary_literals(PACKAGES["cluster"])
    assert not found, "vocabulary literals outside cluster/vocabulary.py:\n" + "\n".join(found)


def test_the_checks_find_what_they_must(tmp_path):
    """A small cluster package with one of each violation: every checker reports it, at its line."""
    root = tmp_path / "cluster"
    (root / "storage").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "vocabulary.py").write_text("EXACT = 'exact'\n")  # the one place the words are spelled
    (root / "storage" / "__init__.py").write_text("")
    (root / "storage" / "ledger.py").write_text(
        '"""approximate_then_exact in prose is fine."""\n'
        "from .. import faults\n"
        "from ..errors import OstraconError\n"
        "row = {'done': 1}['done'] or {}.get('exact')\n"
        "def lazy():\n"
        "    from ..coordinator.deployment import Deployment\n"
        "from .records import _encode\n"
        "from . import records\n"
        "records._cache\n"
        "MODE = 'approximate_then_exact'\n"
        "from ostracon.cluster.service import server\n"
        "import ostracon.nodes\n")
    ledger = root / "storage" / "ledger.py"
    assert set(upward_imports(root)) == {f"{ledger}:6 (storage) imports ostracon.cluster.coordinator.deployment "
                                         "(coordinator)",
                                         f"{ledger}:11 (storage) imports ostracon.cluster.service (service)"}
    assert set(private_uses(root, in_package=True)) == {f"{ledger}:7 imports _encode",
                                                         f"{ledger}:9 uses records._cache"}
    assert vocabulary_literals(root) == [f"{ledger}:10 spells 'approximate_then_exact': use "
                                         "DeletionMode.APPROXIMATE_THEN_EXACT"]
    nodes = tmp_path / "nodes"
    nodes.mkdir()
    (nodes / "worker.py").write_text("from ostracon.aggregator import rules\nfrom ostracon.cluster import errors\n")
    assert wrong_package_imports("nodes", nodes) == [f"{nodes / 'worker.py'}:2 imports ostracon.cluster"]
    assert wrong_package_imports("nodes", PACKAGES["nodes"]) == []
