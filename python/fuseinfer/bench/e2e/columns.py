"""The columns of the recorded end-to-end results: offline throughput and decode latency
rows share one table in microbench/results/<gpu>/runtime.json; serving rows are in
serving.json."""

from __future__ import annotations

from ..report import Column

RUNTIME_COLUMNS = [
    Column("workload", "workload", align="<"),
    Column("model", "model", align="<"),
    Column("weights", "weights", align="<"),
    Column("variant", "variant", align="<"),
    Column("output_tok_per_s", "output tok/s", "{:.0f}"),
    Column("ms_per_token", "ms/token", "{:.3f}"),
    Column("speedup", "with/without", "{:.3f}x"),
    Column("floor_ms", "floor ms", "{:.3f}"),
    Column("vs_floor", "x floor", "{:.2f}"),
    Column("floor_kv_ms", "floor+KV ms", "{:.3f}"),
    Column("seconds", "s", "{:.2f}"),
    Column("peak_kv_pct", "peak KV %", "{:.1f}"),
    Column("steps", "steps"),
    Column("retractions", "retractions"),
]

SERVING_COLUMNS = [
    Column("workload", "workload", align="<"), Column("model", "model", align="<"),
    Column("completed", "done"), Column("failed", "lost"),
    Column("request_throughput", "req/s", "{:.1f}"),
    Column("total_tok_per_s", "total tok/s", "{:.0f}"),
    Column("output_tok_per_s", "output tok/s", "{:.0f}"),
] + [Column(f"{m}_p{q}", f"{m[:-3].upper()} p{q} ms", "{:.2f}")
     for m in ("ttft_ms", "itl_ms", "e2e_ms") for q in (50, 90, 99)]
