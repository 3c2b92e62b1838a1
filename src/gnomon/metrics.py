"""Prometheus metrics without a dependency: counters and fixed-bucket histograms, text format 0.0.4.

`Metrics` is what the HTTP service's ``GET /metrics`` reports; `StreamMetrics` what a stream worker
reports on ``gnomon stream --metrics-port`` (`serve_metrics`). `FeatureNullCounts` counts the values
and nulls served per feature (Chronon's fetcher does the same), `ConsistencyGauges` shows the latest
figures of the consistency job (``consistency.<join>`` tables) on the server's ``/metrics``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
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


def label(value: str) -> str:
    """A label value escaped as the text format wants (backslash, double quote, newline).

    >>> label('a"b')
    'a\\\\"b'
    """
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _is_null(value: Any) -> bool:
    """Null as a client sees it: None, or a float JSON has no spelling for (served as null)."""
    return value is None or (value.__class__ is float and not math.isfinite(value))


class FeatureNullCounts:
    """Per Join (or GroupBy) and feature: values served and how many of them were null.

    Rendered as ``gnomon_feature_values_total{join=...,feature=...}`` and
    ``gnomon_feature_nulls_total{...}`` (label ``groupby`` for GroupBy fetches); their ratio is the
    null rate at fetch time. The hot path counts each answer's *shape* (its tuple of feature names,
    which a definition fixes) and only the nulls per feature; the per-feature value counts are
    summed from the shapes when scraped. Observing and rendering both run on the server's event
    loop, so plain dicts need no lock.
    """

    def __init__(self) -> None:
        self._shapes: dict[tuple[str, str], dict[tuple[str, ...], int]] = {}
        self._nulls: dict[tuple[str, str], dict[str, int]] = {}

    def observe(self, kind: str, name: str, vectors: Iterable[Mapping[str, Any]]) -> None:
        """Count the feature vectors of one fetch (``kind`` is ``join`` or ``groupby``); an empty
        vector (a failed key) serves no values."""
        shapes = self._shapes.get((kind, name))
        if shapes is None:
            shapes = self._shapes[kind, name] = {}
            self._nulls[kind, name] = {}
        nulls = self._nulls[kind, name]
        for vector in vectors:
            if not vector:
                continue
            shape = tuple(vector)
            shapes[shape] = shapes.get(shape, 0) + 1
            for feature, value in vector.items():
                if _is_null(value):
                    nulls[feature] = nulls.get(feature, 0) + 1

    def counts(self, kind: str, name: str) -> dict[str, tuple[int, int]]:
        """Feature -> (values served, nulls among them) of one Join or GroupBy."""
        values: dict[str, int] = {}
        for shape, count in list(self._shapes.get((kind, name), {}).items()):
            for feature in shape:
                values[feature] = values.get(feature, 0) + count
        nulls = self._nulls.get((kind, name), {})
        return {feature: (count, nulls.get(feature, 0)) for feature, count in sorted(values.items())}

    def render(self) -> list[str]:
        served = [
            "# HELP gnomon_feature_values_total Feature values served (successful keys), by Join or "
            "GroupBy and feature.",
            "# TYPE gnomon_feature_values_total counter",
        ]
        nulls = [
            "# HELP gnomon_feature_nulls_total Null feature values served (null, NaN or infinite), by "
            "Join or GroupBy and feature.",
            "# TYPE gnomon_feature_nulls_total counter",
        ]
        for kind, name in sorted(self._shapes):
            for feature, (count, null_count) in self.counts(kind, name).items():
                labels = f'{kind}="{label(name)}",feature="{label(feature)}"'
                served.append(f"gnomon_feature_values_total{{{labels}}} {count}")
                nulls.append(f"gnomon_feature_nulls_total{{{labels}}} {null_count}")
        return served + nulls


_CONSISTENCY_GAUGES = (
    ("mismatch_rate", "Share of the logged fetches whose online value differs from the offline one"),
    ("smape", "Symmetric mean absolute percentage error between online and offline values"),
)


class ConsistencyGauges:
    """The latest figures of the online–offline consistency job, as gauges.

    ``tables`` maps each online Join to the folder of its ``consistency.<join>`` table (columns
    ``ds, feature, rows_compared, mismatches, mismatch_rate, online_null_rate, offline_null_rate,
    smape, max_abs_diff, mismatching_keys``). The newest ``ds=`` partition of each is read at most
    once per ``refresh_s`` (a scrape in between renders the cached figures) and rendered as
    ``gnomon_consistency_mismatch_rate{join,feature}`` and ``gnomon_consistency_smape{join,feature}``,
    plus ``gnomon_consistency_day{join}``: the day (epoch seconds of its midnight) they are about.
    A table that cannot be read keeps its previous figures and is logged.
    """

    def __init__(
        self, tables: Mapping[str, Path], refresh_s: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.tables, self.refresh_s, self.clock = dict(tables), refresh_s, clock
        self._read_at: float | None = None
        self._figures: dict[str, tuple[str, dict[str, dict[str, float]]]] = {}

    def figures(self) -> dict[str, tuple[str, dict[str, dict[str, float]]]]:
        """Join -> (ds, feature -> {gauge: value}), re-read when older than ``refresh_s``."""
        now = self.clock()
        if self._read_at is None or now - self._read_at >= self.refresh_s:
            self._read_at = now
            for join, folder in self.tables.items():
                try:
                    latest = _latest_consistency(folder)
                except Exception as error:  # noqa: BLE001 — a bad table must not break /metrics
                    logging.getLogger(__name__).warning(
                        "consistency table of %s at %s could not be read: %s", join, folder, error
                    )
                    continue
                if latest is None:
                    self._figures.pop(join, None)
                else:
                    self._figures[join] = latest
        return self._figures

    def render(self) -> list[str]:
        figures = self.figures()
        lines: list[str] = []
        for gauge, help_text in _CONSISTENCY_GAUGES:
            name = f"gnomon_consistency_{gauge}"
            lines += [f"# HELP {name} {help_text}, latest day, by Join and feature.", f"# TYPE {name} gauge"]
            for join, (_, features) in sorted(figures.items()):
                for feature, values in sorted(features.items()):
                    if gauge in values:
                        lines.append(
                            f'{name}{{join="{label(join)}",feature="{label(feature)}"}} {values[gauge]}'
                        )
        lines += [
            "# HELP gnomon_consistency_day The day the consistency gauges are about (its midnight, UTC, "
            "epoch seconds), by Join.",
            "# TYPE gnomon_consistency_day gauge",
        ]
        for join, (ds, _) in sorted(figures.items()):
            lines.append(f'gnomon_consistency_day{{join="{label(join)}"}} {_midnight_s(ds)}')
        return lines


def _midnight_s(ds: str) -> str:
    """Epoch seconds of a ``YYYY-MM-DD`` day's midnight (UTC), or NaN for a partition named otherwise."""
    import calendar

    try:
        return str(calendar.timegm(time.strptime(ds, "%Y-%m-%d")))
    except ValueError:
        return "NaN"


def _latest_consistency(folder: Path) -> tuple[str, dict[str, dict[str, float]]] | None:
    """(ds, feature -> gauges) of the newest ``ds=`` partition under ``folder`` (None: none yet).
    A feature written twice in the partition (a rerun appending) keeps its last row."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not folder.is_dir():
        return None
    days = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name.startswith("ds="))
    if not days:
        return None
    files = sorted((folder / days[-1]).glob("*.parquet"))
    wanted = ["feature", *(gauge for gauge, _ in _CONSISTENCY_GAUGES)]
    features: dict[str, dict[str, float]] = {}
    for file in files:
        table: pa.Table = pq.read_table(file, columns=wanted)
        for row in table.to_pylist():
            features[str(row["feature"])] = {
                gauge: float(row[gauge]) for gauge, _ in _CONSISTENCY_GAUGES if row[gauge] is not None
            }
    return days[-1][3:], features


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
        self.features = FeatureNullCounts()
        self.fetch_log_records = Counter(
            "gnomon_fetch_log_records_total",
            "Fetched keys written to the fetch log logs.<join>, by Join.",
            "join",
        )
        self.fetch_log_dropped = Counter(
            "gnomon_fetch_log_dropped_total",
            "Sampled fetched keys not logged: the fetch log's queue was full (or the server stopping), by Join.",
            "join",
        )
        self.fetch_log_lost = Counter(
            "gnomon_fetch_log_lost_total",
            "Fetched keys an earlier server queued for the fetch log but never wrote (it crashed), "
            "found at this server's start, by Join.",
            "join",
        )
        self.fetch_log_errors = Counter(
            "gnomon_fetch_log_write_errors_total",
            "Failed writes of fetch log files (retried at the next flush), by Join.",
            "join",
        )
        self.consistency: ConsistencyGauges | None = None

    def render(self) -> str:
        lines = [
            *self.latency.render(),
            *self.freshness.render(),
            *self.results.render(),
            *self.events.render(),
            *self.features.render(),
            *self.fetch_log_records.render(),
            *self.fetch_log_dropped.render(),
            *self.fetch_log_lost.render(),
            *self.fetch_log_errors.render(),
            *(self.consistency.render() if self.consistency is not None else []),
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
