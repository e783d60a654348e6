"""A worker process from fork to reaping: spawn it, wait for its exit, walk its tree."""
