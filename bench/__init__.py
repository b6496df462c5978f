"""Benchmarks: `pulse bench NAME` prints one JSON object of figures, ours beside a baseline."""
