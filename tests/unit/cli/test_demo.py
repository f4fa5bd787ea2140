"""Tests of `streamload demo`: the quick run end to end, and its measuring pieces."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from streamload.cli import demo
from streamload.cli.main import main


@pytest.fixture(autouse=True)
def quiet(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No config file, no STREAMLOAD_* variables from the caller's environment."""
    for name in list(os.environ):
        if name.startswith("STREAMLOAD_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)


def test_quick_demo_prints_the_table_and_removes_its_corpus(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`streamload demo --quick` compares both loaders on all datasets and leaves no files."""
    parent = tmp_path / "parent"
    parent.mkdir()
    assert main(["demo", "--quick", "--dir", str(parent)]) == 0
    out = capsys.readouterr().out
    for word in ("images", "tokens", "text", "StreamLoader", "DataLoader", "speedup"):
        assert word in out
    assert out.count("StreamLoader") == 3
    assert " NO" not in out
    assert list(parent.iterdir()) == []


def test_keep_leaves_the_corpus_and_reports_it(tmp_path: Path) -> None:
    """run(keep=True) leaves three complete datasets in the reported directory."""
    results = demo.run(quick=True, directory=str(tmp_path), keep=True)
    root = Path(results["corpus"]["dir"])
    assert root.parent == tmp_path
    assert sorted(p.name for p in root.iterdir()) == ["images", "text", "tokens"]
    assert all((root / name / "index.json").is_file() for name in ("images", "text", "tokens"))
    assert results["ok"] is True
    for r in results["results"].values():
        assert r["StreamLoader"]["exactly_once"] and r["DataLoader"]["exactly_once"]
        assert r["speedup"] > 0


def test_bad_size_is_a_config_error(capsys: pytest.CaptureFixture[str]) -> None:
    """An unparsable --size exits 2 with one error line naming the option."""
    assert main(["demo", "--size", "lots"]) == 2
    assert capsys.readouterr().err.startswith("streamload: error: demo --size")


def test_measure_detects_a_repeated_sample() -> None:
    """exactly_once is False when a loader yields a sample twice and skips another."""
    batches = [{"id": np.array([0, 1])}, {"id": np.array([1, 3])}]
    result = demo.measure("fake", lambda: batches, num_samples=4, nbytes=100)
    assert result["exactly_once"] is False
    assert result["samples"] == 4


def test_measure_accepts_a_complete_pass() -> None:
    """exactly_once is True when every id appears once, in any order."""
    batches = [{"id": np.array([2, 0])}, {"id": np.array([3, 1])}]
    result = demo.measure("fake", lambda: batches, num_samples=4, nbytes=100)
    assert result["exactly_once"] is True
    assert result["first_batch_s"] is not None
