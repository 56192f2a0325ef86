"""Benchmark suites, one module per op family (plus its tuner, `<family>_tune.py`).

SUITE_MODULES lists every module that registers a `fuseinfer bench` command
(bench/registry.py), in the order `fuseinfer bench --help` shows them. A new family's bench
is one file here that calls register_suite, plus its line below.
"""

SUITE_MODULES = (
    "fuseinfer.bench.ceilings",
    "fuseinfer.bench.suites.norm",
    "fuseinfer.bench.suites.rope",  # also store_kv_cache (kvcache.py)
    "fuseinfer.bench.suites.attention",
    "fuseinfer.bench.e2e.offline",
    "fuseinfer.bench.e2e.latency",
    "fuseinfer.bench.e2e.serving",
    "fuseinfer.bench.summary",
)
