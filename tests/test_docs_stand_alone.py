"""The repository stands alone: no file sends its reader to the Circus notes users do not have.

The maintainers' Circus reference is not part of the repository, so docs and
comments carry the facts themselves instead of citing it.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# In two pieces, so that this file does not cite it either.
REFERENCE = ("circus" + ".md").encode()
# What tools make in a checkout: virtualenvs, caches, build output.
GENERATED = {".git", "__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis", "build", "dist"}


def repository_files() -> list[Path]:
    """Every file of the checkout but what tools generated in it."""
    files = []
    for directory, subdirectories, names in os.walk(ROOT):
        subdirectories[:] = [
            name
            for name in subdirectories
            if name not in GENERATED
            and not name.startswith(".venv")
            and not name.endswith(".egg-info")
        ]
        files.extend(Path(directory, name) for name in names)
    return files


def test_no_file_cites_the_circus_reference() -> None:
    citing = [
        str(path.relative_to(ROOT))
        for path in repository_files()
        if REFERENCE in path.read_bytes().lower()
    ]
    assert citing == [], f"these files cite a file users do not have: {citing}"
