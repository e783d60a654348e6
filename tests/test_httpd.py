"""``httpd = true``: the broker binds the dashboard's socket, the supervisor runs its watcher."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest

from chapiteau.broker.config import load_broker_config
from chapiteau.protocol.ini import ConfigError
from chapiteau.supervisor.config import load_config

HTTPD = """\
[circus]
endpoint = tcp://127.0.0.1:7555
pubsub_endpoint = tcp://127.0.0.1:7556
httpd = true
httpd_host = 127.0.0.2
httpd_port = 9090
httpd_auth_file = /etc/chapiteau/dashboard.auth
httpd_read_only = true
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "circus.ini"
    path.write_text(text)
    return path


def test_httpd_adds_a_socket_for_the_broker(tmp_path: Path) -> None:
    sockets = load_broker_config(str(write(tmp_path, HTTPD))).sockets
    assert (sockets["circushttpd"].host, sockets["circushttpd"].port) == ("127.0.0.2", 9090)


def test_httpd_adds_a_watcher_serving_on_that_socket(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, HTTPD), {"PATH": "/usr/bin"})
    assert config.circus.httpd is True
    assert config.circus.httpd_read_only is True
    assert [socket.name for socket in config.sockets] == ["circushttpd"]
    (watcher,) = config.watchers
    assert watcher.name == "circushttpd"
    assert watcher.cmd == sys.executable
    assert watcher.use_sockets is True
    assert watcher.numprocesses == 1
    assert shlex.split(watcher.args) == [
        "-m",
        "chapiteau.ctl.web.main",
        "--fd",
        "$(circus.sockets.circushttpd)",
        "--endpoint",
        "tcp://127.0.0.1:7555",
        "--pubsub",
        "tcp://127.0.0.1:7556",
        "--auth-file",
        "/etc/chapiteau/dashboard.auth",
        "--read-only",
    ]


def test_without_httpd_nothing_is_added(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[circus]\nhttpd = false\n"), {"PATH": "/usr/bin"})
    assert (config.watchers, config.sockets) == ((), ())


@pytest.mark.parametrize("kind", ["socket", "watcher"])
def test_a_section_of_the_same_name_is_refused(tmp_path: Path, kind: str) -> None:
    text = f"[circus]\nhttpd = 1\n\n[{kind}:circushttpd]\ncmd = x\nhost = 127.0.0.1\nport = 1\n"
    with pytest.raises(ConfigError, match=f"httpd = true adds \\[{kind}:circushttpd\\]"):
        load_config(write(tmp_path, text), {"PATH": "/usr/bin"})


def test_httpd_needs_the_web_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = __import__("importlib.util").util.find_spec
    monkeypatch.setattr(
        "importlib.util.find_spec", lambda name, *a: None if name == "aiohttp" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"install chapiteau\[web\]") as raised:
        load_config(write(tmp_path, "[circus]\nhttpd = true\n"), {"PATH": "/usr/bin"})
    assert raised.value.key == "httpd"


def test_httpd_is_refused_with_curve_endpoints(tmp_path: Path) -> None:
    text = "[circus]\nhttpd = true\nendpoint_curve_secretkey = /etc/keys/server.key_secret\n"
    with pytest.raises(ConfigError, match="cannot reach CURVE endpoints") as raised:
        load_config(write(tmp_path, text), {"PATH": "/usr/bin"})
    assert raised.value.key == "httpd"
