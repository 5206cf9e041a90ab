"""Shared helpers used by the entry points and the data tools (logging, atomic file output)."""
