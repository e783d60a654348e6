"""endpoint_curve_clients: only the listed client keys reach the control and pubsub endpoints."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import zmq
import zmq.auth

from integration.zmq_clients import REPLY_TIMEOUT

WATCHER = "[watcher:web]\ncmd = /bin/sleep 1000\n"


def curve_socket(context: zmq.Context, kind: int, server: Path, client: Path) -> zmq.Socket:
    sock = context.socket(kind)
    sock.linger = 0
    sock.curve_serverkey, _ = zmq.auth.load_certificate(server)
    sock.curve_publickey, sock.curve_secretkey = zmq.auth.load_certificate(client)
    return sock


def command(verb: str, **properties: str) -> bytes:
    return json.dumps({"id": 1, "command": verb, "properties": properties}).encode()


def test_only_listed_clients_may_command_or_subscribe(daemon, workdir: Path):
    keys = workdir / "keys"
    allowed = workdir / "allowed"
    for directory in (keys, allowed):
        directory.mkdir()
        directory.chmod(0o755)
    server_public, server_secret = zmq.auth.create_certificates(str(keys), "server")
    zmq.auth.create_certificates(str(keys), "stranger")
    friend_public, _ = zmq.auth.create_certificates(str(keys), "friend")
    (allowed / "friend.key").write_text(Path(friend_public).read_text())
    for path in (Path(server_secret), allowed / "friend.key"):
        path.chmod(0o644)  # the supervisor runs as nobody
    d = daemon(
        WATCHER,
        circus=f"endpoint_curve_secretkey = {server_secret}\nendpoint_curve_clients = {allowed}",
    )
    server = Path(server_public)
    context = zmq.Context()
    sockets = {
        (name, kind): curve_socket(context, kind, server, keys / f"{name}.key_secret")
        for name in ("friend", "stranger")
        for kind in (zmq.DEALER, zmq.SUB)
    }
    try:
        for (_, kind), sock in sockets.items():
            if kind == zmq.SUB:
                sock.setsockopt(zmq.SUBSCRIBE, b"")
                sock.connect(d.pubsub)
            else:
                sock.connect(d.endpoint)
        friend, stranger = sockets["friend", zmq.DEALER], sockets["stranger", zmq.DEALER]
        # A DEALER whose refused connection was dropped blocks on send: not sending is
        # not being served either.
        with contextlib.suppress(zmq.Again):
            stranger.send(command("numwatchers"), zmq.NOBLOCK)
        # Events published before a SUB's handshake ends are lost: change until one arrives.
        for attempt in range(20):
            friend.send(command("incr" if attempt % 2 == 0 else "decr", name="web"))
            assert friend.poll(int(REPLY_TIMEOUT * 1000))
            assert json.loads(friend.recv())["status"] == "ok"
            if sockets["friend", zmq.SUB].poll(500):
                break
        else:
            raise AssertionError("the listed client's SUB never received an event")
        assert not stranger.poll(500)
        assert not sockets["stranger", zmq.SUB].poll(0)
    finally:
        for sock in sockets.values():
            sock.close()
        context.term()
