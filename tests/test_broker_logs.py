"""broker/logs.py configure_logging: in a JSON log even a bug's traceback is one JSON line."""

from __future__ import annotations

import json
import subprocess
import sys

CRASH = """\
from chapiteau.broker.logs import configure_logging
configure_logging("info", "json")
raise ValueError("boom")
"""


def test_an_uncaught_exception_is_one_json_event():
    result = subprocess.run(
        [sys.executable, "-c", CRASH], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    event = json.loads(line)
    assert event["event"] == "uncaught_exception" and event["level"] == "critical"
    assert "ValueError: boom" in event["exception"]
