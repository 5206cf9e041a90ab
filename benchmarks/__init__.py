"""Benchmarks run as `python -m benchmarks.<name>` from the repo root (a regular package, so that
third-party top-level `benchmarks` packages, e.g. the one pysbd installs, cannot shadow it)."""
