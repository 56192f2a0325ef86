"""Microbenchmark harness: timing, device ceilings, reports and the summary page."""
