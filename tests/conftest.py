"""Session-wide test isolation: streamload's cache dir (verification marks, downloaded shards)
points into a per-session temporary directory, never the user's ~/.cache, also in subprocesses."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

import pytest

_CACHE_DIR = tempfile.mkdtemp(prefix="streamload-test-cache-")


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("STREAMLOAD_CACHE_DIR", _CACHE_DIR)


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_CACHE_DIR, ignore_errors=True)


# Shared test helpers (tests/conformance.py) import as plain modules from any test directory.
sys.path.insert(0, os.path.dirname(__file__))
