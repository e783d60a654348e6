"""chapiteauctl runs on operators' machines: it needs chapiteau.protocol and pyzmq, nothing more.

And it starts fast: a command over tcp:// or ipc:// imports neither pyzmq nor
dataclasses (about 25 and 10 ms of a command that takes 60).
"""

from __future__ import annotations

import json
import subprocess
import sys

import zmq

PROGRAM = """
import json, sys
import chapiteau.ctl.cli, chapiteau.ctl.client, chapiteau.ctl.commands
print(json.dumps(sorted(name for name in sys.modules if name.startswith("chapiteau."))))
"""


def test_the_cli_imports_no_daemon_module():
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=60, check=True
    )
    imported = json.loads(done.stdout)
    assert "chapiteau.ctl.cli" in imported
    assert [
        name for name in imported if not name.startswith(("chapiteau.ctl", "chapiteau.protocol"))
    ] == []


COMMAND = """
import json, sys
from chapiteau.ctl.cli import main
main(["--endpoint", sys.argv[1], "list"])
print(json.dumps(sorted(sys.modules)))
"""


def test_a_command_imports_neither_pyzmq_nor_dataclasses():
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.linger = 0
    port = router.bind_to_random_port("tcp://127.0.0.1")
    ctl = subprocess.Popen(
        [sys.executable, "-c", COMMAND, f"tcp://127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert router.poll(30_000)
        identity, body = router.recv_multipart()
        reply = {"status": "ok", "watchers": [], "id": json.loads(body)["id"]}
        router.send_multipart([identity, json.dumps(reply).encode()])
        out, _ = ctl.communicate(timeout=30)
    finally:
        ctl.kill()
        ctl.wait()
        router.close()
        context.term()
    imported = json.loads(out.splitlines()[-1])
    assert [name for name in imported if name.split(".")[0] in ("zmq", "dataclasses")] == []
