"""Prometheus text exposition of the server's state and latencies (no client library):
gauges from the engine process's stats, counters and histograms kept by the HTTP
process (time to first token, inter-token latency, end-to-end latency)."""

from __future__ import annotations

import bisect
import threading

from .messages import Stats

BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
             30.0, 60.0)


class Histogram:
    def __init__(self, name: str, help_text: str) -> None:
        self.name, self.help = name, help_text
        self.counts = [0] * (len(BUCKETS_S) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS_S, seconds)] += 1
        self.total += seconds
        self.n += 1

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        running = 0
        for bound, count in zip(BUCKETS_S, self.counts, strict=False):
            running += count
            lines.append(f'{self.name}_bucket{{le="{bound}"}} {running}')
        lines.append(f'{self.name}_bucket{{le="+Inf"}} {self.n}')
        lines += [f"{self.name}_sum {self.total}", f"{self.name}_count {self.n}"]
        return lines


class ServerMetrics:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ttft = Histogram("fuseinfer_time_to_first_token_seconds",
                              "Time from request arrival to its first token")
        self.itl = Histogram("fuseinfer_inter_token_latency_seconds",
                             "Time between consecutive tokens of a request")
        self.e2e = Histogram("fuseinfer_e2e_request_latency_seconds",
                             "Time from request arrival to its last token")
        self.requests = 0
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.engine_pid = 0  # the engine process's pid (0: unknown)
        self.engine_up = True  # False once the engine process died

    def render(self, stats: Stats) -> str:
        gauges = (("fuseinfer_num_requests_waiting", "Requests queued", "waiting"),
                  ("fuseinfer_num_requests_running", "Requests being generated", "running"),
                  ("fuseinfer_kv_cache_usage", "Fraction of KV pages in use", "kv_usage"),
                  ("fuseinfer_requests_aborted", "Requests aborted (client gone) since start",
                   "aborted"),
                  ("fuseinfer_retractions", "Times finished requests were retracted to free "
                   "KV pages, since start", "retractions"))
        values = [(name, text, float(getattr(stats, key))) for name, text, key in gauges]
        values += [("fuseinfer_engine_up", "1 while the engine process serves, 0 once it died",
                    float(self.engine_up)),
                   ("fuseinfer_engine_pid", "The engine process's pid", float(self.engine_pid))]
        lines = []
        for name, text, value in values:
            lines += [f"# HELP {name} {text}", f"# TYPE {name} gauge", f"{name} {value}"]
        with self.lock:
            for name, text, value in (
                ("fuseinfer_requests_total", "Requests finished", self.requests),
                ("fuseinfer_prompt_tokens_total", "Prompt tokens processed", self.prompt_tokens),
                ("fuseinfer_generation_tokens_total", "Tokens generated",
                 self.generation_tokens)):
                lines += [f"# HELP {name} {text}", f"# TYPE {name} counter", f"{name} {value}"]
            for h in (self.ttft, self.itl, self.e2e):
                lines += h.render()
        return "\n".join(lines) + "\n"
