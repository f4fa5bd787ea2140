"""Session-wide test isolation: streamload's cache dir (verification marks, downloaded shards)
points into a per-session temporary directory, never the user's ~/.cache, also in subprocesses."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_CACHE_DIR = tempfile.mkdtemp(prefix="streamload-test-cache-")


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("STREAMLOAD_CACHE_DIR", _CACHE_DIR)


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_CACHE_DIR, ignore_errors=True)


# Shared test helpers (tests/conformance.py) import as plain modules from any test directory.
sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (needs root and mount); skipped where it cannot be mounted."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (the ENOSPC path is also covered by patching)")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
