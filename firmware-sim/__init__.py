"""Simulated device fleet for the demo, the tests and the benchmarks."""
