"""`streamload bench`: a smoke run on a tiny dataset prints the table and saves results."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from streamload import ShardWriter
from streamload.cli import bench
from streamload.cli.main import main

N = 64


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("bench-ds")
    with ShardWriter(str(root), shard_size="2KB") as w:
        for i in range(N):
            w.write({"id": i, "x": np.full(8, i, dtype=np.float32)})
    return str(root)


def test_bench_prints_a_row_per_loader_and_worker_count(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--workers 0,1 --vs-dataloader: 4 rows with a ratio column, bench.json, PNG or a note."""
    out = tmp_path / "out"
    code = main(
        [
            "bench",
            url,
            "--workers",
            "0,1",
            "--batch-size",
            "8",
            "--vs-dataloader",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["loader", "workers", "samples/s", "MB/s"]
    assert "x DL" in lines[0]
    rows = [line.split() for line in lines[1:5]]
    assert [(r[0], r[1]) for r in rows] == [
        ("streamload", "0"),
        ("DataLoader", "0"),
        ("streamload", "1"),
        ("DataLoader", "1"),
    ]
    assert rows[1][-1] == "1.00"  # DataLoader is its own baseline
    saved = json.loads((out / "bench.json").read_text())
    assert [r["samples"] for r in saved] == [N] * 4
    assert all(r["bytes"] == N * (8 * 4 + 8) for r in saved)
    assert all(r["peak_pss"] > 0 and r["memory"] for r in saved)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "plot skipped: matplotlib is not installed" in text
    else:
        assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_refuses_bad_worker_lists(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A malformed --workers list is a usage error (exit 2) naming the option."""
    assert main(["bench", url, "--workers", "zero"]) == 2
    assert "--workers" in capsys.readouterr().err


def test_bench_refuses_a_sampling_interval_below_the_minimum(url: str) -> None:
    """Sampling smaps_rollup faster than 0.2 s is refused (it stalls the sampled processes)."""
    with pytest.raises(ValueError, match="interval"):
        bench.run_bench(url, workers=[0], interval=0.05)


def test_save_skips_the_plot_with_a_clear_note_without_matplotlib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without matplotlib, save() writes bench.json, no PNG, and says how to get the plot."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    runs = [bench.BenchRun("streamload", 0, 1, samples=10, bytes=100, seconds=1.0)]
    json_path, png, note = bench.save(runs, tmp_path)
    assert png is None and not (tmp_path / "bench.png").exists()
    assert "streamload[plot]" in note
    assert json.loads(json_path.read_text())[0]["samples_per_s"] == 10.0
