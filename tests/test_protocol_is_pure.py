"""protocol/ is sans-IO: only the modules named for their I/O import what does I/O."""

from __future__ import annotations

import ast
from pathlib import Path

PROTOCOL = Path(__file__).parent.parent / "protocol"
IO_MODULES = {"channel.py", "ini_files.py", "standard_fds.py", "steering_maps.py", "syscall.py"}
"""The broker and the supervisor share these; each module's docstring says what I/O it does."""
IO_IMPORTS = {"os", "socket", "time", "glob", "sys", "io", "pathlib", "shutil", "subprocess"}
CLOCK_READERS = {"log_lines.py"}
"""These use ``time`` only to read the clock and format it (a log line's timestamp), as
``datetime.now`` would: the broker keeps every module it imports, and datetime is heavier."""


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def io_imports(path: Path) -> set[str]:
    clock = {"time"} if path.name in CLOCK_READERS else set()
    return imported_modules(path) & (IO_IMPORTS - clock)


def test_protocol_modules_other_than_the_io_ones_import_no_io():
    pure = [path for path in sorted(PROTOCOL.glob("*.py")) if path.name not in IO_MODULES]
    assert pure
    doing_io = {path.name: io_imports(path) for path in pure}
    assert doing_io == {path.name: set() for path in pure}


def test_every_io_module_exists():
    assert {name for name in IO_MODULES if (PROTOCOL / name).is_file()} == IO_MODULES
