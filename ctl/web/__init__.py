"""chapiteau-web: the live dashboard, a client of the supervisor's control and pubsub endpoints."""
