"""What a first hour at the command line meets: errors in flag words, pipes that close early,
``auto`` shown as auto, the cache command's order and directory, index.json metadata, and
progress bars that know their total and never pass it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
import xxhash

import streamload as sl
from streamload.cache.disk import DiskCache, ShardKey
from streamload.cli.main import main


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No config file, no STREAMLOAD_* variables, a private cache dir."""
    for name in list(os.environ):
        if name.startswith(("STREAMLOAD_", "XDG_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("STREAMLOAD_CACHE_DIR", str(tmp_path / "cache"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return tmp_path


def _dataset(path: Path, n: int = 30) -> Path:
    with sl.ShardWriter(str(path), shard_size=2048) as w:
        for i in range(n):
            w.write({"id": i, "x": np.full(16, i, np.int32)})
    return path


# -- errors name flags ----------------------------------------------------------------------------


def test_convert_errors_name_the_flags_not_the_keyword_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second convert to the same place says --overwrite (not overwrite=True); a bad size says
    --shard-size; an unrecognisable source says --source-format."""
    src = _dataset(tmp_path / "src")
    dst = str(tmp_path / "dst")
    assert main(["convert", str(src), dst]) == 0
    capsys.readouterr()
    assert main(["convert", str(src), dst]) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and "overwrite=True" not in err
    assert "--append" in err and "mode=" not in err
    assert main(["convert", str(src), dst, "--overwrite", "--shard-size", "huge"]) == 2
    err = capsys.readouterr().err
    assert "--shard-size" in err and "shard_size" not in err
    (tmp_path / "odd.bin").write_bytes(b"?")
    assert main(["convert", str(tmp_path / "odd.bin"), str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--source-format" in err and "source_format" not in err
    lmdb = tmp_path / "lmdb"
    assert main(["convert", str(src), str(lmdb), "--format", "lmdb"]) == 0
    capsys.readouterr()
    assert main(["convert", str(lmdb), str(tmp_path / "r"), "--engine", "ray"]) == 2
    err = capsys.readouterr().err
    assert "--engine ray" in err and "engine=" not in err


# -- pipes ----------------------------------------------------------------------------------------


def test_config_json_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """`streamload config --json | head`: when the reader is gone before the output is written,
    the command ends quietly (exit 141, as a shell tool cut off by SIGPIPE) with no
    BrokenPipeError traceback on stderr."""
    with subprocess.Popen(
        [sys.executable, "-m", "streamload.cli.main", "config", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # the reader leaves before the first byte (head after 10 lines)
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=120) == 141
    assert err == ""


# -- config shows auto ------------------------------------------------------------------------------


def test_config_shows_auto_where_the_value_is_auto(capsys: pytest.CaptureFixture[str]) -> None:
    """ring_size = auto is shown as auto (what a config file says), in the table and in JSON;
    a real size still shows bytes and units."""
    assert main(["config"]) == 0
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()}
    assert rows["ring_size"][0] == "auto" and rows["start_method"][0] == "auto"
    assert rows["heap_retain"][:3] == ["67108864", "(64.0", "MiB)"]
    assert main(["config", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ring_size"]["value"] == "auto"
    assert sl.config.load(ring_size=out["ring_size"]["value"]).ring_size == 0  # round-trips


# -- cache command ------------------------------------------------------------------------------------


def _fill(cache_dir: Path, url: str, names: list[str]) -> None:
    cache = DiskCache(cache_dir, 10_000_000)
    for k, name in enumerate(names):
        data = bytes([k + 1]) * 100
        key = ShardKey(url, name, 100, "xxh3_64", xxhash.xxh3_64_hexdigest(data))
        cache.pin(key, lambda f, data=data: f.write(data)).close()


def test_cache_ls_is_sorted_by_dataset_then_shard_and_takes_cache_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """ls lists datasets in URL order and shards by name; --cache-dir points every action at
    another cache than the configured one."""
    other = tmp_path / "elsewhere"
    _fill(other, "s3://zeta/ds", ["shard-00002.arrow", "shard-00000.arrow", "shard-00001.arrow"])
    _fill(other, "gs://alpha/ds", ["shard-00001.arrow", "shard-00000.arrow"])
    assert main(["cache", "ls", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []  # the configured cache is empty
    assert main(["cache", "ls", "--json", "--cache-dir", str(other)]) == 0
    rows = [(r["dataset"], r["shard"]) for r in json.loads(capsys.readouterr().out)]
    assert rows == sorted(rows) and len(rows) == 5
    assert main(["cache", "ls", "--cache-dir", str(other)]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert [tuple(line.split()[:2]) for line in lines] == rows
    assert main(["cache", "du", "--json", "--cache-dir", str(other)]) == 0
    datasets = json.loads(capsys.readouterr().out)["datasets"]  # the total adds lock files
    assert sum(d["bytes"] for d in datasets.values()) == 500
    assert main(["cache", "clear", "--cache-dir", str(other)]) == 0
    assert "removed 5 shard(s)" in capsys.readouterr().out


# -- info shows metadata ----------------------------------------------------------------------------


def test_info_shows_index_metadata_such_as_class_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A converted image folder's class names (index.json metadata) appear in `info`, in the
    table and in --json."""
    for label in ("cat", "dog"):
        (tmp_path / "imgs" / label).mkdir(parents=True)
        (tmp_path / "imgs" / label / "a.png").write_bytes(b"\x89PNG" + label.encode())
    assert main(["convert", str(tmp_path / "imgs"), str(tmp_path / "ds")]) == 0
    capsys.readouterr()
    assert main(["info", str(tmp_path / "ds")]) == 0
    out = capsys.readouterr().out
    assert any(line.split() == ["classes", "cat,", "dog", "(2)"] for line in out.splitlines())
    assert main(["info", str(tmp_path / "ds"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["metadata"] == {"classes": ["cat", "dog"]}


# -- progress bars ----------------------------------------------------------------------------------


class RecordingBar:
    """A progress bar that fails the moment it would pass its total, and records what it saw."""

    made: ClassVar[list[RecordingBar]] = []

    def __init__(self, iterable: Any = None, *, total: Any = None, **kwargs: Any) -> None:
        self.iterable, self.total, self.n = iterable, total, 0
        self.desc = kwargs.get("desc")
        RecordingBar.made.append(self)

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable:
            self.update(1)
            yield item

    def update(self, n: float = 1) -> None:
        assert self.total is not None, f"bar {self.desc!r} has no total"
        self.n += n
        assert self.n <= self.total, f"bar {self.desc!r} overshoots: {self.n} > {self.total}"

    def close(self) -> None:
        pass

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __enter__(self) -> RecordingBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


@pytest.fixture
def bars(monkeypatch: pytest.MonkeyPatch) -> list[RecordingBar]:
    import streamload.cli.demo
    import streamload.progress

    RecordingBar.made = []
    monkeypatch.setattr(streamload.progress, "progress", RecordingBar)
    monkeypatch.setattr(streamload.cli.demo, "progress", RecordingBar)
    return RecordingBar.made


def _sources(tmp_path: Path) -> dict[str, Path]:
    table = pa.table({"id": list(range(3000)), "text": [f"row {i}" for i in range(3000)]})
    out = {"csv": tmp_path / "in.csv", "parquet": tmp_path / "in.parquet"}
    pa_csv.write_csv(table, out["csv"])
    pq.write_table(table, out["parquet"], row_group_size=500)
    out["jsonl"] = tmp_path / "in.jsonl"
    out["jsonl"].write_text("".join(json.dumps(r) + "\n" for r in table.to_pylist()))
    return out


def test_convert_bars_have_a_total_and_end_on_it(tmp_path: Path, bars: list[RecordingBar]) -> None:
    """convert counts rows when the source knows them (Parquet) and source bytes otherwise
    (CSV, JSON lines, read in small blocks), through a transform too: always a total, reached,
    never passed."""
    for kind, path in _sources(tmp_path).items():
        for transform in (None, lambda row: row if row["id"] % 2 else None):
            out = tmp_path / f"out-{kind}-{transform is None}"
            sl.convert(str(path), str(out), batch_rows=256, progress=True, transform=transform)
            bar = bars[-1]
            assert bar.n == bar.total > 0, (kind, transform, bar.n, bar.total)


def test_verify_bench_and_demo_bars_have_totals_and_never_overshoot(
    tmp_path: Path, bars: list[RecordingBar], capsys: pytest.CaptureFixture[str]
) -> None:
    """verify (bytes), bench with DataLoader's workers (samples, whatever batches each loader
    cuts) and the demo (bytes written, batches read): every bar ends at its total."""
    ds = _dataset(tmp_path / "ds", n=50)
    assert main(["verify", str(ds)]) == 0
    assert main(["bench", str(ds), "--workers", "0,2", "--batch-size", "8", "--vs-dataloader"]) == 0
    assert main(["demo", "--quick"]) == 0
    capsys.readouterr()
    assert {b.desc for b in bars} >= {"verify", "bench", "write corpus", "StreamLoader"}
    for bar in bars:
        assert bar.n == bar.total, (bar.desc, bar.n, bar.total)
