"""chapiteau supervisor."""
