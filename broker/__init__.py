"""chapiteau broker."""
