"""The house rules of the tree, checked on the source (see README "Layout" and ../shared/STYLE.md).

Imports flow one way, down the data path: shells -> jobs -> engine -> providers, ledger, reports ->
ground floor -> policies. No module uses another module's `_private` names. Imports sit at the top
of a module. Every SQL statement lives under router/ledger/. Test doubles do not ship.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ("router", "workers", "policies")

# Lower ranks are lower floors; a module may import its own floor and those below, never above.
RANKS = [
    ("policies", 0),
    ("router.settings", 1),
    ("router.errors", 1),
    ("router.usage", 1),
    ("router.catalog", 1),
    ("router.prompts", 1),
    ("router.chat", 1),
    ("router.route", 1),
    ("router.candidates", 1),
    ("router.redact", 1),
    ("router.metrics", 1),
    ("router.ledger", 2),
    ("router.providers", 2),
    ("router.reports", 3),
    ("router.engine", 4),
    ("router.jobs", 5),
    ("router.cli", 6),
    ("router.api", 6),
    ("workers", 7),
]
# Function-level imports that are there on purpose: none today. Add one only with its reason.
DEFERRED_ALLOWED: dict[str, str] = {}


def rank(module: str) -> int | None:
    found = [r for prefix, r in RANKS if module == prefix or module.startswith(prefix + ".")]
    return found[0] if found else None


def modules() -> list[tuple[str, Path, ast.Module]]:
    out = []
    for package in SHIPPED:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            out.append((name, path, ast.parse(path.read_text(), str(path))))
    return out


def imports(tree: ast.Module) -> list[tuple[ast.stmt, str, list[str]]]:
    """(node, module imported, names imported from it) for every import in the module."""
    out: list[tuple[ast.stmt, str, list[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node, alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node, node.module, [alias.name for alias in node.names]))
    return out


def test_the_layout_rules_cover_every_shipped_module() -> None:
    assert [name for name, _, _ in modules() if rank(name) is None and name not in SHIPPED] == []


def test_no_module_imports_another_modules_private_names() -> None:
    bad = [
        f"{name}: from {module} import {n}"
        for name, _, tree in modules()
        for _, module, names in imports(tree)
        for n in names
        if n.startswith("_") and not n.startswith("__")
    ]
    assert bad == []


def test_imports_flow_down_the_layers() -> None:
    bad = []
    for name, _, tree in modules():
        own = rank(name)
        for _, module, names in imports(tree):
            targets = [module] + [f"{module}.{n}" for n in names]
            target_rank = min((r for r in map(rank, targets) if r is not None), default=None)
            if own is not None and target_rank is not None and target_rank > own:
                bad.append(f"{name} (floor {own}) imports {module} (floor {target_rank})")
    assert bad == []


def test_imports_sit_at_the_top_of_each_module() -> None:
    bad = []
    for name, _, tree in modules():
        top = {id(node) for node in tree.body}
        for node, module, _ in imports(tree):
            if (
                id(node) not in top
                and not _under_type_checking(tree, node)
                and f"{name}:{module}" not in DEFERRED_ALLOWED
            ):
                bad.append(f"{name}: import {module} at line {node.lineno}")
    assert bad == []


def test_every_sql_statement_lives_in_the_ledger() -> None:
    """Outside router/ledger/, nothing imports sqlalchemy's statement builders or runs a statement."""
    bad = []
    for name, path, tree in modules():
        if name.startswith("router.ledger"):
            continue
        for _node, module, names in imports(tree):
            if (
                module.split(".")[0] in ("sqlalchemy", "sqlmodel")
                and not module.startswith("sqlalchemy.exc")
                and names != ["Session"]
            ):
                bad.append(f"{name}: from {module} import {', '.join(names)}")
        source = path.read_text()
        for call in ("session.execute(", "session.exec(", "session.get(", "session.add(", 'text("'):
            if call in source:
                bad.append(f"{name}: {call}")
    assert bad == []


def test_test_doubles_do_not_ship() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = config["tool"]["setuptools"]["packages"]["find"]["include"]
    assert not any(pattern.startswith("tests") for pattern in include)
    assert not list((ROOT / "router").rglob("fake*.py"))
    assert (ROOT / "tests" / "fakes" / "server.py").exists()


def _under_type_checking(tree: ast.Module, target: ast.stmt) -> bool:
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            if any(child is target for child in ast.walk(node)):
                return True
    return False


@pytest.mark.parametrize(
    ("module", "expected"),
    [("router.engine.batch", 4), ("router.jobs", 5), ("policies.drift", 0), ("router.ledger.repo", 2), ("httpx", None)],
)
def test_rank_reads_the_table(module: str, expected: int | None) -> None:
    assert rank(module) == expected
