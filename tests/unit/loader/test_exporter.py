"""StatsExporter and Prometheus text: valid, periodic, parseable exports of loader.stats()."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamload import ShardWriter, StatsExporter, StreamingDataset, StreamLoader
from streamload.errors import ConfigError
from streamload.loader.exporter import PrometheusCollector, prometheus_text

N = 50


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("export-ds")
    with ShardWriter(str(root), shard_size="2KB") as w:
        for i in range(N):
            w.write({"id": i, "x": np.full(8, i, dtype=np.float32)})
    return str(root)


def _loader(url: str, **kwargs: Any) -> StreamLoader:
    return StreamLoader(StreamingDataset(url), batch_size=5, **kwargs)  # 10 steps


# A tiny parser for the text exposition format: `name{labels} value` lines and # HELP/# TYPE.
_SAMPLE = re.compile(
    r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})? '
    r"(-?[0-9.e+-]+|NaN|[+-]Inf)$"
)


def _parse_exposition(text: str) -> dict[tuple[str, str], float]:
    samples: dict[tuple[str, str], float] = {}
    typed: set[str] = set()
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "summary")
            typed.add(name)
            continue
        if line.startswith("# HELP "):
            continue
        match = _SAMPLE.match(line)
        assert match, f"not an exposition line: {line!r}"
        name, labels, value = match.group(1), match.group(2) or "", match.group(4)
        assert any(name == t or name in (f"{t}_sum", f"{t}_count") for t in typed), name
        samples[(name, labels)] = float(value)
    return samples


def test_jsonl_export_is_valid_and_periodic(url: str, tmp_path: Path) -> None:
    """every_steps=3 over 10 steps writes 3 lines (steps 3, 6, 9) plus one at close."""
    path = tmp_path / "stats.jsonl"
    loader = _loader(url)
    with StatsExporter(loader, path, every_steps=3):
        for _ in loader:
            pass
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["steps"] for line in lines] == [3, 6, 9, 10]
    assert lines[-1]["samples"] == N
    assert all(isinstance(line["time"], float) for line in lines)
    assert lines[0]["time"] <= lines[-1]["time"]


def test_export_to_a_callable_receives_the_stats_dicts(url: str) -> None:
    """A callable target gets each export as the stats dict; nothing after close()."""
    got: list[dict[str, Any]] = []
    loader = _loader(url)
    exporter = StatsExporter(loader, got.append, every_steps=5)
    for _ in loader:
        pass
    exporter.close()
    exporter.close()  # idempotent
    for _ in loader:
        pass
    assert [g["steps"] for g in got] == [5, 10, 10]


def test_time_based_export_happens_at_most_once_per_interval(url: str) -> None:
    """every_s far above the run's length exports nothing until close()."""
    got: list[dict[str, Any]] = []
    loader = _loader(url)
    with StatsExporter(loader, got.append, every_s=3600):
        for _ in loader:
            pass
        assert got == []
    assert len(got) == 1


def test_prometheus_text_parses_and_matches_stats(url: str) -> None:
    """The exposition text parses (tiny parser) and carries the stats' numbers."""
    loader = _loader(url)
    for _ in loader:
        pass
    stats = loader.stats()
    samples = _parse_exposition(prometheus_text(stats, labels={"rank": '0"x'}))
    assert samples[("streamload_samples_total", '{rank="0\\"x"}')] == N
    assert samples[("streamload_data_wait_seconds_count", '{rank="0\\"x"}')] == 10
    busy = {k: v for k, v in samples.items() if k[0] == "streamload_stage_busy_seconds_total"}
    assert {labels for _, labels in busy} >= {'{rank="0\\"x",stage="read"}'}
    assert samples[("streamload_cache_hits_total", '{rank="0\\"x"}')] == 0


def test_prometheus_text_parses_with_prometheus_client(url: str) -> None:
    """prometheus_client's own parser accepts the text; the collector yields the families."""
    parser = pytest.importorskip("prometheus_client.parser")
    registry_mod = pytest.importorskip("prometheus_client")
    loader = _loader(url)
    for _ in loader:
        pass
    families = {
        f.name: f for f in parser.text_string_to_metric_families(prometheus_text(loader.stats()))
    }
    assert families["streamload_data_wait_seconds"].type == "summary"
    registry = registry_mod.CollectorRegistry()
    registry.register(PrometheusCollector(loader))
    assert registry.get_sample_value("streamload_samples_total") == N


def test_prometheus_file_export_is_replaced_whole(url: str, tmp_path: Path) -> None:
    """A prometheus file target holds the latest complete exposition, no temp files left."""
    path = tmp_path / "streamload.prom"
    loader = _loader(url)
    with StatsExporter(loader, path, every_steps=4, format="prometheus") as exporter:
        for _ in loader:
            pass
    assert exporter.exports == 3
    assert _parse_exposition(path.read_text())[("streamload_steps_total", "")] == 10
    assert [p.name for p in tmp_path.iterdir()] == ["streamload.prom"]


@pytest.mark.parametrize(
    "kwargs", [{"every_steps": 0}, {"every_s": -1.0}, {"format": "csv"}], ids=str
)
def test_bad_exporter_settings_are_refused(url: str, kwargs: dict[str, Any]) -> None:
    """Non-positive intervals and unknown formats raise ConfigError naming the setting."""
    with pytest.raises(ConfigError, match="StatsExporter"):
        StatsExporter(_loader(url), lambda _: None, **kwargs)
