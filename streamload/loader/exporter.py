"""Exporting loader stats: JSON lines or Prometheus text, every N steps or seconds.

``StatsExporter(loader, to, every_steps=..., every_s=...)`` hooks the loader's step counter
(``LoaderStats.listeners``) and, when due, writes ``loader.stats()``:

- ``format="jsonl"`` (default): one JSON object per line, ``{"time": unix seconds, **stats}``,
  appended to a file, or the dict passed to a callable;
- ``format="prometheus"``: the text exposition format (version 0.0.4), atomically replacing a
  file (for node_exporter's textfile collector), or the text passed to a callable.

``prometheus_text(stats)`` renders a stats dict as exposition text with no dependency;
``PrometheusCollector(loader)`` (needs the ``prometheus`` extra, ``prometheus_client``) exposes
the same metrics to a ``prometheus_client`` registry for scraping.

Invariants: exporting never runs in a worker and never changes what the loader yields; the
exporter holds the loader weakly (a persistent loader's workers end with the loader, not at a
later garbage collection); a file export is complete at every moment (jsonl lines are written
whole and flushed; prometheus files are replaced by rename).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from streamload.errors import ConfigError

_FORMATS = ("jsonl", "prometheus")


class StatsExporter:
    """Write a loader's stats every ``every_steps`` batches and/or ``every_s`` seconds.

    Args:
        loader: a ``StreamLoader``.
        to: a file path, or a callable receiving each export (the stats dict for jsonl, the
            exposition text for prometheus).
        every_steps: export after every this many batches handed to the training loop.
        every_s: export when at least this many seconds passed since the last export (checked
            at each batch). Neither given: every 100 steps.
        format: ``"jsonl"`` or ``"prometheus"``.

    Raises:
        ConfigError: a non-positive interval or an unknown format.

    Use as a context manager (or call ``close()``): closing writes a final export and unhooks.
    """

    def __init__(
        self,
        loader: Any,
        to: str | os.PathLike[str] | Callable[[Any], None],
        *,
        every_steps: int | None = None,
        every_s: float | None = None,
        format: str = "jsonl",
    ) -> None:
        if format not in _FORMATS:
            raise ConfigError(f"StatsExporter format: expected one of {_FORMATS}, got {format!r}")
        if every_steps is None and every_s is None:
            every_steps = 100
        if every_steps is not None and every_steps <= 0:
            raise ConfigError(f"StatsExporter every_steps: must be > 0, got {every_steps}")
        if every_s is not None and not every_s > 0:
            raise ConfigError(f"StatsExporter every_s: must be > 0, got {every_s}")
        self.format = format
        self.every_steps = every_steps
        self.every_s = every_s
        self.exports = 0
        self._to = to if callable(to) else Path(to)
        self._loader = weakref.ref(loader)
        self._stats = loader._stats
        self._last_step = self._stats.steps
        self._last_time = time.monotonic()
        self._stats.listeners.append(self._on_step)

    def _on_step(self, stats: Any) -> None:
        due = self.every_steps is not None and stats.steps - self._last_step >= self.every_steps
        if not due and self.every_s is not None:
            due = time.monotonic() - self._last_time >= self.every_s
        if due:
            self.export()

    def export(self) -> None:
        """Write one export now (what the schedule does when due)."""
        loader = self._loader()
        if loader is None:
            return
        snapshot = {"time": time.time(), **loader.stats()}
        self._last_step, self._last_time = self._stats.steps, time.monotonic()
        self.exports += 1
        if self.format == "jsonl":
            self._emit_jsonl(snapshot)
        else:
            self._emit_text(prometheus_text(snapshot))

    def _emit_jsonl(self, snapshot: dict[str, Any]) -> None:
        if callable(self._to):
            self._to(snapshot)
            return
        with open(self._to, "a", encoding="utf-8") as f:
            f.write(json.dumps(snapshot) + "\n")

    def _emit_text(self, text: str) -> None:
        if callable(self._to):
            self._to(text)
            return
        target = self._to
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def close(self) -> None:
        """Write a final export and stop exporting. Idempotent."""
        if self._on_step in self._stats.listeners:
            self._stats.listeners.remove(self._on_step)
            self.export()

    def __enter__(self) -> StatsExporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- Prometheus text exposition format ----------------------------------------------------------


def _metrics(stats: dict[str, Any]) -> Iterator[tuple[str, str, str, list[tuple[str, float]]]]:
    """(name, type, help, [(label text, value)]) for every exported metric."""
    yield (
        "streamload_steps_total",
        "counter",
        "batches handed to the training loop",
        [("", stats["steps"])],
    )
    yield (
        "streamload_samples_total",
        "counter",
        "samples handed to the training loop",
        [("", stats["samples"])],
    )
    yield (
        "streamload_bytes_total",
        "counter",
        "array/tensor/bytes leaf bytes delivered",
        [("", stats["bytes"])],
    )
    yield (
        "streamload_samples_per_second",
        "gauge",
        "samples over time spent in passes",
        [("", stats["samples_per_s"])],
    )
    yield (
        "streamload_bytes_per_second",
        "gauge",
        "bytes over time spent in passes",
        [("", stats["bytes_per_s"])],
    )
    wait = stats["data_wait"]
    yield (
        "streamload_data_wait_seconds",
        "summary",
        "time __next__ spent producing a batch",
        [
            ('quantile="0.5"', wait["p50_s"]),
            ('quantile="0.95"', wait["p95_s"]),
            ('quantile="0.99"', wait["p99_s"]),
            ("_sum", wait["total_s"]),
            ("_count", stats["steps"]),
        ],
    )
    yield (
        "streamload_data_wait_max_seconds",
        "gauge",
        "longest data-wait of one step",
        [("", wait["max_s"])],
    )
    stages = stats["stages"]
    yield (
        "streamload_stage_busy_seconds_total",
        "counter",
        "time per pipeline stage",
        [(f'stage="{stage}"', seconds) for stage, seconds in stages["busy_s"].items()],
    )
    yield (
        "streamload_worker_idle_seconds_total",
        "counter",
        "workers waiting for work",
        [("", stages["idle_s"])],
    )
    ring = stats["ring"]
    yield (
        "streamload_ring_occupancy_ratio",
        "gauge",
        "mean ready bytes / ring capacity",
        [("", ring["occupancy"])],
    )
    yield (
        "streamload_ring_producer_wait_seconds_total",
        "counter",
        "workers waiting for ring",
        [("", ring["producer_wait_s"])],
    )
    yield (
        "streamload_padding_samples",
        "gauge",
        "repeated samples for equal steps per rank",
        [("", stats["padding_samples"])],
    )
    cache = stats["cache"]
    for key in ("hits", "misses", "evictions", "retries", "throttled"):
        yield f"streamload_cache_{key}_total", "counter", f"remote cache {key}", [("", cache[key])]
    yield (
        "streamload_cache_downloaded_bytes_total",
        "counter",
        "bytes downloaded",
        [("", cache["bytes_downloaded"])],
    )


def _number(value: float) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, float) and math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if isinstance(value, float) else str(int(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def prometheus_text(stats: dict[str, Any], labels: dict[str, str] | None = None) -> str:
    """Render a ``loader.stats()`` dict in the Prometheus text exposition format (0.0.4).

    Args:
        stats: the dict ``loader.stats()`` returned.
        labels: constant labels added to every sample (e.g. ``{"rank": "0"}``).

    Returns:
        The exposition text, one ``# HELP``/``# TYPE`` pair per metric, ending in a newline.
    """
    const = ",".join(f'{k}="{_escape(str(v))}"' for k, v in sorted((labels or {}).items()))
    lines = []
    for name, kind, help_text, samples in _metrics(stats):
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for label, value in samples:
            suffix = ""
            if label.startswith("_"):
                suffix, label = label, ""
            all_labels = ",".join(part for part in (const, label) if part)
            braces = f"{{{all_labels}}}" if all_labels else ""
            lines.append(f"{name}{suffix}{braces} {_number(value)}")
    return "\n".join(lines) + "\n"


class PrometheusCollector:
    """A ``prometheus_client`` collector for one loader (``registry.register(...)``).

    Needs the ``prometheus`` extra. Metrics are those of `prometheus_text`, read at scrape time.

    Raises:
        ImportError: prometheus_client is not installed (``pip install streamload[prometheus]``).
    """

    def __init__(self, loader: Any, labels: dict[str, str] | None = None) -> None:
        try:
            from prometheus_client.parser import text_string_to_metric_families
        except ImportError as exc:
            raise ImportError(
                "PrometheusCollector needs prometheus_client: pip install 'streamload[prometheus]'"
            ) from exc
        self._parse = text_string_to_metric_families
        self._loader = weakref.ref(loader)
        self._labels = labels

    def collect(self) -> Iterator[Any]:
        loader = self._loader()
        if loader is None:
            return iter(())
        return iter(list(self._parse(prometheus_text(loader.stats(), self._labels))))
