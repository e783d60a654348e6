"""Tests for broker/landlock.py: the filesystem outside the rules is out of reach, even for root."""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

import prctl
import pytest

from chapiteau.broker import landlock
from tests.forked import in_child

pytestmark = pytest.mark.skipif(landlock.abi_version() == 0, reason="no Landlock in this kernel")


def restricted(rules, then):
    def child() -> str:
        prctl.set_no_new_privs(1)
        landlock.restrict(rules)
        return then()

    return child


def outcome(action, *args) -> str:
    try:
        action(*args)
    except OSError as exc:
        return errno.errorcode[exc.errno]
    return "ok"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for name in ("inside", "outside"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "file").write_text(name)
        (tmp_path / name / "file").chmod(0o644)
    return tmp_path


def test_reading_is_allowed_only_beneath_the_rules(tree):
    rules = [landlock.Rule(str(tree / "inside"), landlock.READ)]

    def read_both() -> str:
        return " ".join(
            outcome(lambda p=p: open(p).read())
            for p in (tree / "inside/file", tree / "outside/file")
        )

    assert in_child(restricted(rules, read_both)) == (0, "ok EACCES")


def test_a_rule_may_name_a_file(tree):
    rules = [landlock.Rule(str(tree / "outside/file"), landlock.READ)]
    assert in_child(restricted(rules, (tree / "outside/file").read_text)) == (0, "outside")


def test_writing_is_refused_even_where_reading_is_allowed(tree):
    rules = [landlock.Rule(str(tree / "inside"), landlock.READ)]
    result = in_child(restricted(rules, lambda: outcome(open, tree / "inside/file", "a")))
    assert result == (0, "EACCES")


def test_sockets_are_made_and_removed_only_where_granted(tree):
    rules = [
        landlock.Rule(str(tree / "inside"), landlock.MAKE_SOCK | landlock.REMOVE_FILE),
    ]

    def bind_and_remove() -> str:
        results = []
        for directory in ("inside", "outside"):
            sock = socket.socket(socket.AF_UNIX)
            results.append(outcome(sock.bind, str(tree / directory / "s.sock")))
            results.append(outcome(os.unlink, tree / directory / "file"))
        return " ".join(results)

    assert in_child(restricted(rules, bind_and_remove)) == (0, "ok ok EACCES EACCES")


def test_missing_paths_are_skipped_and_reported(tree):
    missing = str(tree / "nowhere")

    def report() -> str:
        prctl.set_no_new_privs(1)
        result = landlock.restrict([landlock.Rule(missing, landlock.READ)])
        assert result is not None
        return f"{result.abi} {list(result.missing)}"

    code, output = in_child(report)
    assert code == 0
    assert output.split(" ", 1)[1] == str([missing])
