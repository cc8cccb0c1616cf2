"""The package's imports run one way, down the layers of one table, and never in a cycle.

``MAY_IMPORT`` is the one place the allowed directions are written (docs/architecture.md
draws it). A module may import any module of its own unit and of the units its unit may
import; nothing else from ``gateway``. A unit is a sub-package (``gateway.core``) or, for
the top-level files, a named group (``foundation``) or the file itself (``config``).

Read from the source with :mod:`ast` (nothing is imported). Every import counts: at module
level, inside a function (deferred, to keep a heavy dependency out of start-up) and under
``if TYPE_CHECKING:`` (for annotations only). A cycle hidden by deferring one side is
still a cycle for the reader who has to understand both modules together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import gateway

ROOT = Path(gateway.__file__).parent


def modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of ``known`` that ``name`` imports when it is imported."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    edges: set[str] = set()

    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            edges.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                edges.add(submodule if submodule in known else base)
    return {edge for edge in edges if edge in known and edge != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def strong(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                strong(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            strong(node)
    return found


def test_the_checker_sees_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_gateway_package_has_no_import_cycles() -> None:
    known = modules()
    graph = {name: imports(name, path, known) for name, path in known.items()}
    assert "gateway.store.fs" in graph["gateway.store.url"]  # the checker reads real edges
    assert cycles(graph) == []


FOUNDATION = {"errors", "redact", "keyfiles", "procs", "failpoints", "filemap"}
BELOW_TRUST = {"foundation", "core", "config", "store", "index", "ledger", "pacs"}
EVERYTHING_BELOW_THE_TOP = BELOW_TRUST | {
    "trust",
    "ingest",
    "orthanc_plugin",
    "api",
    "metrics",
    "notify",
}

#: unit -> the units it may import (besides itself). Read top to bottom as the data flow's
#: floors: pure rules, then one adapter per outside system, then the work built on them.
MAY_IMPORT: dict[str, set[str]] = {
    "foundation": set(),  # errors, redact, keyfiles, procs, failpoints, filemap
    "core": {"foundation"},  # pure rules: digest, seal, merkle, keys, ownership, allowlist
    "config": {"foundation", "core"},
    "store": {"foundation", "core", "config"},  # object store backends
    "index": {"foundation", "core", "config"},  # the index: SQLite or PostgreSQL
    "ledger": {"foundation", "core", "config"},  # the xray contract and its chain
    "pacs": {"foundation", "core", "config"},  # Orthanc: REST client, embedded server
    "trust": BELOW_TRUST,  # verdicts, verify, audit, restore, views, alerts
    "ingest": BELOW_TRUST | {"trust"},  # DICOM port to committed
    "orthanc_plugin": {"foundation", "core", "config", "index", "ledger", "trust"},
    "api": BELOW_TRUST | {"trust", "ingest"},
    "metrics": BELOW_TRUST | {"trust", "ingest"},
    # alerts -> outbox -> webhooks, syslog; ingest for its one backoff schedule
    "notify": BELOW_TRUST | {"trust", "ingest"},
    "stack": EVERYTHING_BELOW_THE_TOP,
    "bench": EVERYTHING_BELOW_THE_TOP | {"stack"},
    "fuzz": EVERYTHING_BELOW_THE_TOP | {"stack", "bench"},  # bench.peers starts `up`
    "cli": EVERYTHING_BELOW_THE_TOP | {"stack", "bench", "fuzz"},
    "__main__": {"cli"},
}


def unit_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:  # gateway/__init__.py: the version
        return "foundation"
    if parts[1] in FOUNDATION:
        return "foundation"
    return parts[1]


def upward(graph: dict[str, set[str]]) -> list[str]:
    """Every edge the table does not allow, as ``module -> module``."""
    wrong = []
    for module, imported in sorted(graph.items()):
        mine = unit_of(module)
        for other in sorted(imported):
            theirs = unit_of(other)
            if theirs != mine and theirs not in MAY_IMPORT[mine]:
                wrong.append(f"{module} -> {other} ({mine} may not import {theirs})")
    return wrong


def test_every_module_belongs_to_a_unit_of_the_table() -> None:
    assert {unit_of(name) for name in modules()} <= set(MAY_IMPORT)


def test_the_table_itself_runs_one_way() -> None:
    table = {unit: set(allowed) for unit, allowed in MAY_IMPORT.items()}
    assert all(allowed <= set(MAY_IMPORT) for allowed in table.values())
    assert cycles(table) == []


def test_the_checker_sees_an_upward_import() -> None:
    graph = {"gateway.core.seal": {"gateway.trust.verify", "gateway.errors"}}
    assert upward(graph) == [
        "gateway.core.seal -> gateway.trust.verify (core may not import trust)"
    ]


def test_no_module_imports_from_a_higher_layer() -> None:
    known = modules()
    graph = {name: imports(name, path, known) for name, path in known.items()}
    assert "gateway.core.merkle" in graph["gateway.ledger.client"]  # real edges are read
    assert upward(graph) == []


#: Classes that may share a name: none today. A name should say one thing in the package.
SHARED_CLASS_NAMES: set[str] = set()


def class_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in tree.body if isinstance(node, ast.ClassDef)}


def test_no_two_modules_define_a_class_of_the_same_name() -> None:
    seen: dict[str, list[str]] = {}
    for name, path in modules().items():
        for cls in class_names(path):
            seen.setdefault(cls, []).append(name)
    shared = {cls: sorted(where) for cls, where in seen.items() if len(where) > 1}
    assert {cls for cls in shared if cls not in SHARED_CLASS_NAMES} == set(), shared


def reachable(start: str, graph: dict[str, set[str]]) -> set[str]:
    """Every module ``start`` imports, directly or through others."""
    seen, todo = {start}, [start]
    while todo:
        for other in graph[todo.pop()] - seen:
            seen.add(other)
            todo.append(other)
    return seen


def test_the_offline_receipt_verifier_needs_only_the_pure_floors() -> None:
    """An auditor's copy of ``verify --receipt`` needs core and the foundation, no gateway:
    no config, index, ledger, trust nor stack, read statically (every import) and seen at
    run time in a fresh interpreter (no pydantic settings, web3, FastAPI nor database)."""
    import subprocess
    import sys

    known = modules()
    graph = {name: imports(name, path, known) for name, path in known.items()}
    needs = {unit_of(module) for module in reachable("gateway.core.receipt", graph)}
    assert needs == {"core", "foundation"}
    assert "gateway.core.fingerprint" in reachable("gateway.core.receipt", graph)

    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, gateway.core.receipt; print(' '.join(sys.modules))"],
        check=True, capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    gateway_modules = {m for m in loaded if m.startswith("gateway.")}
    assert {unit_of(m) for m in gateway_modules} == {"core", "foundation"}
    for heavy in ("pydantic_settings", "web3", "fastapi", "psycopg", "sqlite3", "httpx"):
        assert heavy not in loaded
