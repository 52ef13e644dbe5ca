"""From a resolved run configuration to a run record (the matrix runner builds on this)."""
