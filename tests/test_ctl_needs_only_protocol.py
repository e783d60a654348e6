"""chapiteauctl runs on operators' machines: it needs chapiteau.protocol and pyzmq, nothing more."""

from __future__ import annotations

import json
import subprocess
import sys

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
