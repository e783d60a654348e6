"""chapiteau-web's command line: the credentials file and the no-open-access rule."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from chapiteau.ctl.web.main import UsageError, is_loopback, read_credentials


def basic(pair: str) -> str:
    return "Basic " + base64.b64encode(pair.encode()).decode()


def test_credentials_accept_only_a_listed_pair(tmp_path: Path):
    path = tmp_path / "auth"
    path.write_text("# who may act\n\nalice:s3cret\nbob:pass:with:colons\n")
    credentials = read_credentials(str(path))
    assert credentials.accept(basic("alice:s3cret"))
    assert credentials.accept(basic("bob:pass:with:colons"))
    assert not credentials.accept(basic("alice:pass:with:colons"))
    assert not credentials.accept(basic("alice:"))
    assert not credentials.accept("Bearer s3cret")
    assert not credentials.accept("Basic !!!")
    assert not credentials.accept(None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("alice\n", "line 1: write 'user:password'"),
        ("# nobody\n", "no 'user:password' line"),
        ("\n:secret\n", "line 2: write 'user:password'"),
    ],
)
def test_a_bad_credentials_file_names_the_line(tmp_path: Path, text: str, message: str):
    path = tmp_path / "auth"
    path.write_text(text)
    with pytest.raises(UsageError, match=message):
        read_credentials(str(path))


def test_a_missing_credentials_file_is_named(tmp_path: Path):
    with pytest.raises(UsageError, match=f"--auth-file {tmp_path}/none"):
        read_credentials(str(tmp_path / "none"))


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.10", False),
        ("example.org", False),
    ],
)
def test_only_loopback_addresses_go_without_auth(host: str, loopback: bool):
    assert is_loopback(host) is loopback
