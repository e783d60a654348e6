"""The packages keep to their lines: who may import whom, and no import cycle anywhere.

Read from the source with ``ast`` (nothing is imported): each module's
``chapiteau.*`` imports, module-level and in functions alike, make a graph
that must have no cycle, and whose edges between packages follow the design:
the broker never imports the supervisor nor the CLI, protocol/ imports no
other package, the CLI needs only protocol/.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
PACKAGES = ("broker", "supervisor", "protocol", "ctl")
ALLOWED = {
    "broker": {"broker", "protocol"},
    "supervisor": {"supervisor", "protocol"},
    "protocol": {"protocol"},
    "ctl": {"ctl", "protocol"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["chapiteau", *parts])


def modules() -> dict[str, Path]:
    return {
        module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")
    }


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The chapiteau modules ``name`` imports (a ``from X import y`` names X.y when it is one)."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}".rstrip(".")
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {module for module in found if module in known and module != name}


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports_of(name, path, known) for name, path in found.items()}


def package_of(module: str) -> str:
    return module.split(".")[1]


def test_each_package_imports_only_what_the_design_allows():
    crossings = {
        (module, target)
        for module, targets in graph().items()
        for target in targets
        if package_of(target) not in ALLOWED[package_of(module)]
    }
    assert crossings == set()


def test_there_is_no_import_cycle():
    edges = graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(edges[module]):
            # A package's __init__ importing its own submodules is not a cycle of substance.
            if module.startswith(f"{target}.") or target.startswith(f"{module}."):
                continue
            if state.get(target) == 1:
                cycles.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module)
    assert cycles == []


def test_the_graph_sees_the_imports_it_checks():
    edges = graph()
    assert "chapiteau.protocol.broker_messages" in edges["chapiteau.broker.service"]
    assert "chapiteau.protocol.circus_messages" in edges["chapiteau.ctl.client"]


BROKER_NEVER_LOADS = {
    "structlog": "asyncio and ssl: 12 MiB",
    "asyncio": "structlog's",
    "ssl": "structlog's",
    "secrets": "brings hashlib and random",
    "zmq": "the supervisor's",
    "psutil": "the supervisor's",
    "shutil": "bz2, lzma and zlib with it; argparse asks it the terminal's width",
    "subprocess": "threading and locale with it; the launcher starts programs, not the broker",
    "threading": "subprocess's",
    "platform": "os.uname() says the machine",
    "datetime": "its pure-Python half; time formats the timestamps",
    "traceback": "linecache and tokenize with it; imported when an exception is logged",
    "dataclasses": "inspect, ast, dis and tokenize with it: protocol/records.py instead",
    "inspect": "dataclasses'",
    "ast": "dataclasses'",
    "argparse": "0.45 MiB with what it loads; getopt reads the command line",
    "locale": "what argparse's messages load, to find their translations",
    "encodings.idna": "stringprep and unicodedata with it: getaddrinfo's codec for a str host",
    "sysconfig": "its tables stay cached; the interpreter says where its libraries are",
    "typing": "0.6 MiB for annotations: imported only under TYPE_CHECKING",
    "chapiteau.protocol.options": "the table of watcher options: the supervisor's and the CLI's",
}
"""What the running broker must not hold, and why: it keeps every module it imports
for as long as it holds the sockets (docs/benchmarks.md, broker RSS)."""


def test_the_broker_holds_nothing_heavy_it_does_not_use() -> None:
    # What the serving broker has imported once its start-up ran: the modules of
    # `chapiteau` and of its launcher, and what reading the command line, resolving a
    # socket's host and listing the libraries Landlock leaves readable load.
    script = (
        "import sys, chapiteau.broker.main, chapiteau.broker.launcher;"
        "from chapiteau.broker.command_line import parse_args;"
        "from chapiteau.broker.binding import resolve;"
        "from chapiteau.broker.confinement import python_libraries;"
        "from tests.specs import socket_spec;"
        "parse_args(['circus.ini']); resolve(socket_spec()); python_libraries();"
        f"print(' '.join(sorted(m for m in {sorted(BROKER_NEVER_LOADS)!r} if m in sys.modules)))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.split()
    assert {module: BROKER_NEVER_LOADS[module] for module in loaded} == {}
