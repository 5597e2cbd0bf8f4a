"""Developer tools: the synthetic trace generator (demos, tests, benchmarks)."""
