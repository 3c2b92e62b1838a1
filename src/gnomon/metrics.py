"""Prometheus metrics without a dependency: counters and fixed-bucket histograms, text format 0.0.4.

`Metrics` is what the HTTP service's ``GET /metrics`` reports; `StreamMetrics` what a stream worker
reports on ``gnomon stream --metrics-port`` (`serve_metrics`).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
FRESHNESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Histogram:
    """Cumulative buckets per label value, as Prometheus expects."""

    def __init__(self, name: str, help_text: str, label: str, buckets: tuple[float, ...]) -> None:
        self.name, self.help_text, self.label, self.buckets = name, help_text, label, buckets
        self._counts: dict[str, list[int]] = defaultdict(lambda: [0] * (len(buckets) + 1))
        self._sums: dict[str, float] = defaultdict(float)
        self._lock = threading.Lock()

    def observe(self, label_value: str, seconds: float) -> None:
        with self._lock:
            counts = self._counts[label_value]
            for index, bound in enumerate(self.buckets):
                if seconds <= bound:
                    counts[index] += 1
                    break
            else:
                counts[-1] += 1
            self._sums[label_value] += seconds

    def observe_many(self, label_value: str, seconds: Sequence[float]) -> None:
        """Observe many values at once (binned with numpy)."""
        if not len(seconds):
            return
        values = np.asarray(seconds, dtype=np.float64)
        binned = np.bincount(
            np.searchsorted(np.asarray(self.buckets), values, side="left"), minlength=len(self.buckets) + 1
        )
        with self._lock:
            counts = self._counts[label_value]
            for index, count in enumerate(binned.tolist()):
                counts[index] += count
            self._sums[label_value] += float(values.sum())

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help_text}", f"# TYPE {self.name} histogram"]
        with self._lock:
            for value, counts in sorted(self._counts.items()):
                running = 0
                for bound, count in zip(self.buckets, counts, strict=False):
                    running += count
                    lines.append(f'{self.name}_bucket{{{self.label}="{value}",le="{bound}"}} {running}')
                running += counts[-1]
                lines.append(f'{self.name}_bucket{{{self.label}="{value}",le="+Inf"}} {running}')
                lines.append(f'{self.name}_sum{{{self.label}="{value}"}} {self._sums[value]}')
                lines.append(f'{self.name}_count{{{self.label}="{value}"}} {running}')
        return lines


class Counter:
    def __init__(self, name: str, help_text: str, label: str) -> None:
        self.name, self.help_text, self.label = name, help_text, label
        self._values: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()

    def inc(self, label_value: str, amount: int = 1) -> None:
        with self._lock:
            self._values[label_value] += amount

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help_text}", f"# TYPE {self.name} counter"]
        with self._lock:
            lines += [f'{self.name}{{{self.label}="{k}"}} {v}' for k, v in sorted(self._values.items())]
        return lines


class Metrics:
    """Everything `GET /metrics` reports."""

    def __init__(self) -> None:
        self.latency = Histogram(
            "gnomon_request_seconds", "HTTP request latency by route.", "route", LATENCY_BUCKETS
        )
        self.freshness = Histogram(
            "gnomon_event_to_servable_seconds",
            "From an event's publication to the moment it is servable, by topic.",
            "topic",
            FRESHNESS_BUCKETS,
        )
        self.results = Counter("gnomon_fetch_results_total", "Fetched keys by result status.", "status")
        self.events = Counter(
            "gnomon_events_ingested_total", "Events accepted by POST /v1/events, by topic.", "topic"
        )

    def render(self) -> str:
        lines = [
            *self.latency.render(),
            *self.freshness.render(),
            *self.results.render(),
            *self.events.render(),
        ]
        return "\n".join(lines) + "\n"


class StreamMetrics:
    """What a stream worker reports, per GroupBy."""

    def __init__(self) -> None:
        self.freshness = Histogram(
            "gnomon_stream_event_to_servable_seconds",
            "From an event's publication (broker time) to the end of the store write "
            "that makes it servable, by GroupBy.",
            "group_by",
            FRESHNESS_BUCKETS,
        )
        self.records = Counter("gnomon_stream_records_total", "Records consumed, by GroupBy.", "group_by")
        self.rows = Counter(
            "gnomon_stream_rows_total", "Rows stored (events the Query kept), by GroupBy.", "group_by"
        )
        self.dead_letters = Counter(
            "gnomon_stream_dead_letters_total", "Malformed events set aside, by GroupBy.", "group_by"
        )

    def render(self) -> str:
        lines = [
            *self.freshness.render(),
            *self.records.render(),
            *self.rows.render(),
            *self.dead_letters.render(),
        ]
        return "\n".join(lines) + "\n"


def serve_metrics(render: Callable[[], str], host: str, port: int) -> ThreadingHTTPServer:
    """Serve ``GET /metrics`` (Prometheus text) from a daemon thread; ``shutdown()`` stops it."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 — the http.server hook name
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404, "only /metrics is served here")
                return
            body = render().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 — quiet, as uvicorn's access log is
            return

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="gnomon-metrics", daemon=True).start()
    return server
