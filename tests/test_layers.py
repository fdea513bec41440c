"""The import contract: dependencies point one way, and the pure layers do no I/O.

Every import of every module of the gateway is read from its source (``ast``,
``TYPE_CHECKING`` blocks and function-level imports included) and checked
against :data:`LAYERS`: a module may import from its own layer and the layers
below it, never from one above. ``make imports`` runs this file; so do
``make check`` and the whole suite.

import-linter states such contracts for packages, but ``app.py`` and
``supervision.py`` are top-level modules (the layout we keep), which it does
not take as roots; this is the same check, written for the tree we have.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]

# Top to bottom. An entry names module prefixes; a module belongs to the entry
# with its longest matching prefix.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("the command", ("app",)),
    ("composition", ("gateway",)),
    ("role actors", ("actors",)),
    ("supervision's face", ("supervision",)),
    ("supervision's shell", ("_supervision.shell", "_supervision")),
    ("the actor runtime and the pure supervision core", ("_supervision.runtime", "_supervision.core",
                                                         "_supervision.decision_log")),
    ("the simulated exchange", ("simulator",)),
    ("I/O: the WebSocket layer, the brokers, the audit database", ("transport", "brokers", "audit")),
    ("pure: the protocols, market data, metric names", ("protocol", "market", "metrics")),
]
# Modules that must stay free of I/O: no event loop, no actors, no sockets, no clients.
PURE = ("protocol", "market", "metrics", "transport.frames", "transport.handshake", "brokers.broker",
        "_supervision.core", "_supervision.decision_log", "audit.records")
IO_MODULES = ("gevent", "pykka", "redis", "websocket", "flask", "werkzeug", "socket", "geventwebsocket", "psycopg",
              "psycopg2", "sqlite3")
# The simulator is the oracle the Bybit parser is tested against: no shared code either way.
INDEPENDENT = [("simulator", "market")]
ENTRIES = [
    ROOT / "app.py", ROOT / "supervision.py",
    *[p for d in ("gateway", "actors", "_supervision", "simulator", "transport", "brokers", "audit", "protocol",
                  "market", "metrics") for ext in ("*.py", "*.pyx") for p in (ROOT / d).rglob(ext)],
]


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    if path.suffix == ".pyx":  # Cython: its Python imports, line by line (``cimport`` is C, not a module)
        return _cython_imports(path)
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def _cython_imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        words = line.split()
        if len(words) >= 4 and words[0] == "from" and words[2] == "import":
            module = words[1] if not words[1].startswith(".") else f"{_module(path).rpartition('.')[0]}{words[1]}"
            found += [(number, module), *((number, f"{module}.{name.strip(',')}") for name in words[3:])]
        elif len(words) >= 2 and words[0] == "import":
            found += [(number, name.strip(",")) for name in words[1:]]
    return found


def _layer(module: str) -> int | None:
    best, best_len = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    return best


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_every_module_has_a_layer():
    modules = [_module(p) for p in ENTRIES]
    assert len(modules) > 50
    assert [m for m in modules if _layer(m) is None] == []


def test_dependencies_point_one_way():
    upward = []
    for path in ENTRIES:
        source = _module(path)
        mine = _layer(source)
        assert mine is not None
        for line, target in _imports(path):
            theirs = _layer(target)
            if theirs is not None and theirs < mine and not _within(target, source):
                upward.append(f"{path.relative_to(ROOT)}:{line}: {source} ({LAYERS[mine][0]}) imports {target} "
                              f"({LAYERS[theirs][0]})")
    assert upward == []


def test_the_pure_layers_do_no_io():
    offending = []
    for path in ENTRIES:
        source = _module(path)
        if not any(_within(source, p) for p in PURE):
            continue
        for line, target in _imports(path):
            if any(_within(target, io) for io in IO_MODULES):
                offending.append(f"{path.relative_to(ROOT)}:{line}: {target}")
    assert offending == []


def test_the_simulator_and_the_parser_share_no_code():
    shared = []
    for path in ENTRIES:
        source = _module(path)
        for a, b in INDEPENDENT:
            for mine, other in ((a, b), (b, a)):
                if _within(source, mine):
                    shared += [f"{path.relative_to(ROOT)}:{line}: {target}"
                               for line, target in _imports(path) if _within(target, other)]
    assert shared == []


def test_the_contract_catches_an_upward_import(tmp_path):
    """The checker itself: a protocol module importing the gateway is found."""
    assert _layer("protocol.messages") > _layer("gateway.hub")
    fake = tmp_path / "x.py"
    fake.write_text("from gateway.hub import Hub\nimport gevent\n")
    assert [t for _, t in _imports(fake)] == ["gateway.hub", "gateway.hub.Hub", "gevent"]
    fake = tmp_path / "x.pyx"
    fake.write_text("from cpython.ref cimport PyObject\nfrom gateway.hub import Hub\nimport gevent\n")
    assert [t for _, t in _imports(fake)] == ["gateway.hub", "gateway.hub.Hub", "gevent"]
