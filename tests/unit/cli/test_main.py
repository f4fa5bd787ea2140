"""Tests of the `streamload` command line (config, info, verify), run in-process via main()."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import streamload as sl
from streamload.cli.main import main


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run each test with no config file and no STREAMLOAD_* variables."""
    for name in list(os.environ):
        if name.startswith(("STREAMLOAD_", "XDG_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return tmp_path


def _make_dataset(path: Path, n: int = 40) -> Path:
    with sl.ShardWriter(str(path), shard_size=4096) as writer:
        for i in range(n):
            writer.write({"id": i, "tokens": np.full(128, i, np.int32), "text": f"sample {i}"})
    return path


def test_config_prints_every_setting_with_value_and_source(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`streamload config` lists each setting once with its effective value and source."""
    monkeypatch.setenv("STREAMLOAD_SHARD_SIZE", "1MB")
    Path("streamload.toml").write_text('compression = "zstd"\n')
    assert main(["config"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["key", "value", "source"]
    by_key = {line.split()[0]: line for line in lines[1:]}
    assert list(by_key) == list(sl.config.setting_names())
    assert by_key["shard_size"].split()[1] == "1000000"
    assert by_key["shard_size"].endswith("env STREAMLOAD_SHARD_SIZE")
    assert by_key["compression"].split()[1] == "zstd"
    assert by_key["compression"].endswith(f"file {Path('streamload.toml').absolute()}")
    assert by_key["progress"].split()[1:] == ["auto", "default"]


def test_config_json_matches_load(capsys: pytest.CaptureFixture[str]) -> None:
    """`streamload config --json` gives the values and sources config.load() computes."""
    assert main(["config", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    cfg = sl.config.load()
    assert {k: v["value"] for k, v in out.items()} == dict(cfg.items())
    assert {v["source"] for v in out.values()} == {"default"}


def test_bad_config_is_one_error_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A StreamloadError prints `streamload: error: ...` without a traceback and exits 2."""
    monkeypatch.setenv("STREAMLOAD_CACHE_LIMIT", "20 gigs")
    assert main(["config"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "streamload: error: cache_limit = '20 gigs' from env STREAMLOAD_CACHE_LIMIT:"
        " not a size (examples: 512MB, 20GiB, 1000000)\n"
    )


def test_debug_flag_shows_the_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    """With --debug the StreamloadError propagates (so its traceback is shown)."""
    monkeypatch.setenv("STREAMLOAD_PROGRESS", "sometimes")
    with pytest.raises(sl.ConfigError, match="progress"):
        main(["--debug", "config"])
    with pytest.raises(sl.ConfigError, match="progress"):
        main(["config", "--debug"])


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown subcommand is a usage error with exit code 2."""
    assert main(["frobnicate"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_info_describes_schema_counts_and_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`streamload info` shows format, samples, shards, bytes and every column."""
    from streamload.format.index import load_index

    url = _make_dataset(tmp_path / "ds")
    index = load_index(str(url))
    assert main(["info", str(url)]) == 0
    out = capsys.readouterr().out
    assert "arrow (format_version 1)" in out
    assert f"samples  {index.num_samples:,}" in out
    assert f"shards   {len(index.shards):,}" in out
    assert f"({index.total_bytes:,} B)" in out
    columns = {
        line.split()[0]: line.split()[1:] for line in out.split("column")[1].splitlines()[1:]
    }
    assert columns == {
        "id": ["int", "-", "-"],
        "tokens": ["ndarray", "int32", "[128]"],
        "text": ["str", "-", "-"],
    }


def test_info_json_reports_the_index(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`streamload info --json` carries counts, bytes and schema equal to index.json's."""
    from streamload.format.index import load_index

    url = _make_dataset(tmp_path / "ds", n=25)
    assert main(["info", "--json", str(url)]) == 0
    out = json.loads(capsys.readouterr().out)
    index = load_index(str(url))
    assert out["num_samples"] == 25
    assert out["num_shards"] == len(index.shards) > 1
    assert out["total_bytes"] == sum(s["bytes"] for s in out["shards"]) == index.total_bytes
    assert [c["name"] for c in out["schema"]] == ["id", "tokens", "text"]


def test_info_on_missing_dataset_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """info on a directory without index.json exits 2 naming the index path."""
    assert main(["info", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("streamload: error: ")
    assert "nothing/index.json" in err


def test_verify_passes_on_an_intact_dataset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """verify exits 0 and reports every shard OK when nothing changed."""
    url = _make_dataset(tmp_path / "ds")
    assert main(["verify", str(url)]) == 0
    out = capsys.readouterr().out
    assert "BAD" not in out
    assert out.startswith("all ")


def test_verify_names_a_flipped_shard_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Flipping one byte in one shard makes verify exit 1 and name exactly that shard."""
    url = _make_dataset(tmp_path / "ds")
    shards = sorted(p.name for p in url.glob("shard-*.arrow"))
    victim = url / shards[1]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    assert main(["verify", str(url)]) == 1
    out = capsys.readouterr().out
    bad = [line for line in out.splitlines() if line.startswith("BAD")]
    assert len(bad) == 1
    assert shards[1] in bad[0]
    assert "checksum mismatch" in bad[0]
    assert f"1 of {len(shards)} shards bad" in out


def test_verify_names_missing_and_truncated_shards(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A deleted shard and a truncated shard are both named and verify exits 1."""
    url = _make_dataset(tmp_path / "ds")
    shards = sorted(url.glob("shard-*.arrow"))
    shards[0].unlink()
    truncated = shards[-1]
    truncated.write_bytes(truncated.read_bytes()[:100])
    assert main(["verify", str(url)]) == 1
    out = capsys.readouterr().out
    assert f"BAD  {shards[0].name}: missing" in out
    assert f"BAD  {truncated.name}: checksum mismatch" in out


def test_console_script_help_runs_in_a_subprocess() -> None:
    """`python -m streamload.cli --help` works and lists the subcommands."""
    proc = subprocess.run(
        [sys.executable, "-m", "streamload.cli.main", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    for command in ("config", "info", "verify", "demo"):
        assert command in proc.stdout
