"""The columns of the recorded runtime results (offline throughput and decode latency rows
share one table in microbench/results/<gpu>/runtime.json)."""

from __future__ import annotations

from ..bench.report import Column

RUNTIME_COLUMNS = [
    Column("workload", "workload", align="<"),
    Column("model", "model", align="<"),
    Column("variant", "variant", align="<"),
    Column("output_tok_per_s", "output tok/s", "{:.0f}"),
    Column("ms_per_token", "ms/token", "{:.3f}"),
    Column("speedup", "with/without", "{:.3f}x"),
    Column("seconds", "s", "{:.2f}"),
    Column("peak_kv_pct", "peak KV %", "{:.1f}"),
    Column("steps", "steps"),
    Column("retractions", "retractions"),
]
