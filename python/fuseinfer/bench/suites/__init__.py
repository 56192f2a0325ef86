"""Benchmark suites, one module per op family."""
