"""The ZMQ endpoints: control, pubsub and stats."""
