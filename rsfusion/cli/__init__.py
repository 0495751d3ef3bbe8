"""Command-line entry points (mirrored by scripts/)."""
