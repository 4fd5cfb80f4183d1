"""Shared machinery of iTAML runs: configuration checks, the session loop, records and checkpoints."""
