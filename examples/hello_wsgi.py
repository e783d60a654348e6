"""A tiny WSGI app served on a socket inherited from chapiteau.

Run as ``python hello_wsgi.py --fd N`` (Circus style: the fd number is
substituted into the command by ``$(circus.sockets.web)``). It answers every
request with the worker's pid and uid, so you can see which worker served you
and that it does not run as root.
"""

from __future__ import annotations

import argparse
import os
import socket
import socketserver
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer


def application(environ: dict, start_response) -> list[bytes]:
    body = f"hello from pid {os.getpid()} uid {os.getuid()}\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body.encode()]


class QuietHandler(WSGIRequestHandler):
    def log_request(self, code: object = "-", size: object = "-") -> None:
        pass


class InheritedSocketServer(socketserver.ThreadingMixIn, WSGIServer):
    """A WSGI server that uses an already bound and listening socket."""

    daemon_threads = True

    def __init__(self, fd: int) -> None:
        sock = socket.socket(fileno=fd)
        sock.setblocking(True)
        super().__init__(sock.getsockname(), QuietHandler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.server_name, self.server_port = "localhost", sock.getsockname()[1]
        self.setup_environ()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fd", type=int, required=True, help="the inherited listening socket")
    args = parser.parse_args()
    server = InheritedSocketServer(args.fd)
    server.set_app(application)
    server.serve_forever()


if __name__ == "__main__":
    main()
