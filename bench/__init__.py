"""Benchmarks that print the figures the README quotes (``python -m bench.ingest``, ``python -m bench.latency``).

Nothing in the project imports this package.
"""
