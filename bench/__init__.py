"""Benchmarks of a real jobyard server: `python -m bench` (or `make bench`)."""
