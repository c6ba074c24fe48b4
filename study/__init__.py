"""vamp-study: the service around `trainables` (CLI, search spaces, orchestration, tracking)."""
