"""Session-wide test isolation: streamload's cache dir (verification marks, downloaded shards)
points into a per-session temporary directory, never the user's ~/.cache, also in subprocesses.

``ray_local``: ONE local Ray instance for the whole session (2 CPUs), started on first use, by
the tests that run last. Ray is
kept on loopback (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 makes every Ray process bind 127.0.0.1
instead of the machine's address) and sends no usage statistics; both must be set before ray is
imported, so they are set here at start-up.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_CACHE_DIR = tempfile.mkdtemp(prefix="streamload-test-cache-")


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("STREAMLOAD_CACHE_DIR", _CACHE_DIR)
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests on the Ray instance run last (stable order otherwise): Ray's driver threads and
    worker processes then never share the interpreter with tests that fork workers or count
    threads, descriptors or memory."""
    items.sort(key=lambda item: "ray_local" in getattr(item, "fixturenames", ()))


@pytest.fixture(scope="session")
def ray_local() -> Iterator[Any]:
    """The session's local Ray instance (num_cpus=2, no dashboard), shut down at the end."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


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
