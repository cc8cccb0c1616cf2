"""Benchmarks of the gateway against the performance targets of the design."""
