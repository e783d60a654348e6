"""The `list` round trip as Circus's own client sees it, and the bare ZMQ echo it is held to.

Runs in the bench's virtualenv (it has circus 0.19):

``python circus_client.py echo ENDPOINT`` serves a ROUTER that sends every request back
as it came (CircusClient takes it for the reply: same id), until killed.

``python circus_client.py list ROUNDS CALLS ENDPOINT...`` times ``CircusClient.call``
of ``list``: in each round, CALLS calls to each endpoint in turn, and prints
``{endpoint: [median seconds of each round]}`` as JSON.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import zmq
from circus.client import CircusClient


def echo(endpoint: str) -> None:
    router = zmq.Context.instance().socket(zmq.ROUTER)
    router.bind(endpoint)
    while True:
        router.send_multipart(router.recv_multipart())


def round_trips(rounds: int, calls: int, endpoints: list[str]) -> dict[str, list[float]]:
    clients = {endpoint: CircusClient(endpoint=endpoint, timeout=30) for endpoint in endpoints}
    medians: dict[str, list[float]] = {endpoint: [] for endpoint in endpoints}
    for _ in range(rounds):
        for endpoint, client in clients.items():
            samples = []
            for _ in range(calls):
                started = time.perf_counter()
                client.call({"command": "list", "properties": {}})
                samples.append(time.perf_counter() - started)
            medians[endpoint].append(statistics.median(samples))
    for client in clients.values():
        client.stop()
    return medians


if __name__ == "__main__":
    if sys.argv[1] == "echo":
        echo(sys.argv[2])
    else:
        print(json.dumps(round_trips(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:])))
