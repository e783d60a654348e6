"""Values the broker, the supervisor and chapiteauctl must agree on, defined once.

Each side imports its constant from here, so that the channel variable the
broker sets is the one the supervisor reads, the exit status the supervisor
returns for a refused configuration is the one the broker recognises, and
the CLI's default endpoint is the daemon's.
"""

from __future__ import annotations

VERSION = "0.1.0"
"""chapiteau's version, as ``--version`` prints it (pyproject.toml says the same)."""

BROKER_FD_VARIABLE = "CHAPITEAU_BROKER_FD"
"""The environment variable through which the broker names the supervisor's channel fd."""

SUPERVISOR_START_VARIABLE = "CHAPITEAU_SUPERVISOR_START"
"""The environment variable through which the broker tells a supervisor which one it is:
1 for the first it started, 2 after one restart, and so on (the supervisor's metrics)."""

SYSTEMD_VARIABLES = frozenset(
    {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"}
)
"""What systemd (or whoever started chapiteau) gives one process, to speak for the service
or to find its sockets: the broker takes them out of its environment, and ``copy_env``
never passes them on (a worker gets its own LISTEN_* from ``socket_protocol = systemd``)."""

INSTANCE_VARIABLE = "CHAPITEAU_INSTANCE"
"""The environment variable that marks a tree's processes with the real path of its config:
the supervisor gets it from the broker and every worker from the supervisor, so that a
broker started again on the same config finds the orphaned workers of its previous life.
It only selects candidates: a process can put anything in its environment."""

EX_CONFIG = 78
"""The supervisor's exit status when it refuses the configuration (sysexits.h)."""

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
"""``[circus] endpoint``'s default: the control socket, and chapiteauctl's default."""
DEFAULT_PUBSUB_ENDPOINT = "tcp://127.0.0.1:5556"
"""``[circus] pubsub_endpoint``'s default: the events, and ``chapiteauctl listen``'s default."""
DEFAULT_STATS_ENDPOINT = "tcp://127.0.0.1:5557"
"""``[circus] stats_endpoint``'s default."""
