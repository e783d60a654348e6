"""Tests for chapiteau.supervisor.endpoints.pubsub: watcher events on a real PUB socket."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import zmq
import zmq.asyncio

from chapiteau.supervisor.endpoints.pubsub import PubSub
from chapiteau.supervisor.events import Events

TIMEOUT = 10.0


def test_a_watcher_event_goes_out_as_circus_topic_and_json(tmp_path: Path) -> None:
    async def main() -> list[bytes]:
        endpoint = f"ipc://{tmp_path}/pubsub.sock"
        context = zmq.asyncio.Context()
        events = Events()
        pubsub = PubSub(endpoint, events, context)
        pubsub.start()
        sub = context.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"watcher.")
        sub.connect(endpoint)
        try:
            # A SUB joins asynchronously: publish until the first event gets through.
            while True:
                events.publish("Web App", "spawn", {"process_pid": 42})
                try:
                    return await asyncio.wait_for(sub.recv_multipart(), 0.05)
                except TimeoutError:
                    continue
        finally:
            pubsub.close()
            context.destroy(linger=0)

    topic, payload = asyncio.run(asyncio.wait_for(main(), TIMEOUT))
    assert topic == b"watcher.web_app.spawn"
    assert json.loads(payload) == {"process_pid": 42}
