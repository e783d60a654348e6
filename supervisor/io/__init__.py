"""Where workers' output goes: stream classes and the pipes that feed them."""
