"""`streamload demo --remote`: the demo corpus goes to an object store and streams back through the cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from streamload.cli import demo
from streamload.store import filesystem as store


def _listing(url: str, storage_options: dict[str, Any]) -> list[str]:
    fs, root = store.resolve(url, storage_options)
    return fs.find(root) if fs.exists(root) else []


def test_demo_streams_a_remote_corpus_and_removes_it(
    s3_url: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    """Every sample arrives exactly once from s3, and the corpus is deleted afterwards."""
    monkeypatch.setenv("STREAMLOAD_CACHE_DIR", str(tmp_path / "cache"))
    results = demo.run(quick=True, remote=s3_url.url, storage_options=s3_url.storage_options)
    assert results["ok"]
    assert all(
        url.startswith(s3_url.url + "/streamload-demo-")
        for url in results["corpus"]["datasets"].values()
    )
    assert _listing(s3_url.url, s3_url.storage_options) == []
    cached = [p for p in (tmp_path / "cache").rglob("*.arrow")]
    assert cached  # read through the shard cache, not in place


def test_demo_cli_remote_flag(s3_url: Any, tmp_path: Path) -> None:
    """`streamload demo --quick --remote s3://...` reaches the store through AWS_ENDPOINT_URL_S3."""
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL_S3": s3_url.storage_options["endpoint_url"],
        "STREAMLOAD_CACHE_DIR": str(tmp_path / "cache"),
    }
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "streamload.cli.main",
            "demo",
            "--quick",
            "--json",
            "--remote",
            s3_url.url,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout)["ok"] is True
