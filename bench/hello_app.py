"""The benchmarked WSGI application: a 12-byte response, served by bjoern or gunicorn.

``python hello_app.py FD`` runs one bjoern worker on the inherited listening socket FD
(chapiteau and circusd pass ``$(circus.sockets.NAME)``; the bench passes its own when it
runs the workers alone); gunicorn imports ``hello_app:app``. It runs in the bench's own
virtualenv (``.venv-bench``), which has bjoern and gunicorn.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable

BODY = b"Hello world\n"


def app(environ: dict, start_response: Callable) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))])
    return [BODY]


if __name__ == "__main__":
    import bjoern

    listener = socket.socket(fileno=int(sys.argv[1]))
    listener.setblocking(False)
    bjoern.server_run(listener, app)
