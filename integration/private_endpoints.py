"""Give every daemon a test starts its own ZMQ endpoints.

Circus's default endpoints are fixed TCP ports (5555-5557), so two daemons
started at once (tests run in parallel, or next to a real circusd) would fight
over them. With the ``private_endpoints`` fixture, each config gets ipc
endpoints in a fresh directory that the service user can write to. Use it in a
module with::

    from integration.private_endpoints import private_endpoints  # noqa: F401 - fixture
    pytestmark = pytest.mark.usefixtures("private_endpoints")
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from integration.harness import Chapiteau


def with_private_endpoints(config: str, directory: Path) -> str:
    """``config`` with its control and pubsub endpoints in ``directory``."""
    lines = (
        f"endpoint = ipc://{directory}/control.sock\n"
        f"pubsub_endpoint = ipc://{directory}/pubsub.sock\n"
    )
    if "[circus]\n" in config:
        return config.replace("[circus]\n", "[circus]\n" + lines, 1)
    return f"[circus]\n{lines}\n{config}"


@pytest.fixture
def private_endpoints(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Rewrite the config of every Chapiteau this test starts; yields the endpoint directory."""
    directory = Path(tempfile.mkdtemp(prefix="chapiteau-endpoints-"))
    directory.chmod(0o777)
    original = Chapiteau.__init__

    def init(self: Chapiteau, where: Path, config: str, args: tuple[str, ...] = ()) -> None:
        original(self, where, with_private_endpoints(config, directory), args)

    monkeypatch.setattr(Chapiteau, "__init__", init)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)
