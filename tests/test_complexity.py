"""Every function stays readable: none is of radon's grade D or worse.

A function with more than 20 paths through it (cyclomatic complexity, radon's
grade D) is split into steps that each have a name; the supervisor, where a
watcher's life is read, first of all.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from radon.complexity import cc_rank, cc_visit

ROOT = Path(__file__).parent.parent
READABLE = "ABC"
"""radon's grades up to 20 paths (C: 11 to 20)."""


def too_complex(package: Path) -> list[str]:
    found = []
    for path in sorted(package.rglob("*.py")):
        for block in cc_visit(path.read_text()):
            if cc_rank(block.complexity) not in READABLE:
                where = f"{path.relative_to(package)}:{block.lineno}"
                found.append(f"{where} {block.fullname} {block.complexity}")
    return found


@pytest.mark.parametrize("package", ["supervisor", "broker", "protocol", "ctl"])
def test_no_function_is_grade_d_or_worse(package: str):
    assert too_complex(ROOT / package) == []


def test_the_check_finds_a_function_with_21_paths(tmp_path: Path):
    branches = "".join(f"    if x == {n}:\n        return {n}\n" for n in range(20))
    (tmp_path / "deep").mkdir()
    (tmp_path / "deep" / "module.py").write_text(f"def f(x):\n{branches}    return -1\n")
    assert too_complex(tmp_path) == ["deep/module.py:1 f 21"]
