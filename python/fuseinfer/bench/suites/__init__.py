"""Benchmark suites, one module per op family (plus its tuner, `<family>_tune.py`).

SUITE_MODULES is every module that may register a `fuseinfer bench` command
(bench/registry.py), in the order `fuseinfer bench --help` shows them: the ceilings, then
each family module found in this package (alphabetically), then the end-to-end benches and
the summary. A new family's bench is one file here that calls register_suite; nothing else
is edited.
"""

from __future__ import annotations

import pkgutil

_FAMILY_SUITES = tuple(
    f"{__name__}.{m.name}" for m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name)
    if not m.name.endswith("_tune"))

SUITE_MODULES = (
    "fuseinfer.bench.ceilings",
    *_FAMILY_SUITES,
    "fuseinfer.bench.e2e.offline",
    "fuseinfer.bench.e2e.latency",
    "fuseinfer.bench.e2e.serving",
    "fuseinfer.bench.e2e.kv_accuracy",
    "fuseinfer.bench.summary",
)
