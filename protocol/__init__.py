"""chapiteau protocol."""
