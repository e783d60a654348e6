"""Tests for broker/socket_table.py that need a failure the kernel will not give on demand."""

from __future__ import annotations

import os
import socket

import pytest

from chapiteau.broker.socket_table import ReloadError, apply_reload, bind_all, close_all
from tests.specs import USER, socket_spec


def test_a_reload_whose_adjustment_fails_closes_what_it_bound(tmp_path, monkeypatch):
    path = tmp_path / "web.sock"
    table = bind_all([socket_spec(family=socket.AF_UNIX, path=str(path), umask=0o077)], USER)
    try:
        before = dict(table)

        def refuse(target: object, mode: int) -> None:
            raise PermissionError(1, "Operation not permitted", str(target))

        monkeypatch.setattr(os, "chmod", refuse)
        with pytest.raises(
            ReloadError,
            match=r"socket:web: cannot change the mode of .*: Operation not permitted; restart",
        ):
            apply_reload(
                table,
                {
                    "web": socket_spec(family=socket.AF_UNIX, path=str(path), umask=0o022),
                    "new": socket_spec("new", family=socket.AF_UNIX, path=str(tmp_path / "n")),
                },
                USER,
            )
        assert table == before
        assert not os.path.lexists(tmp_path / "n")
    finally:
        close_all(table.values())
