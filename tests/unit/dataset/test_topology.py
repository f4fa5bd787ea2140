"""Where a process sits in a job (`streamload.dataset.topology`): arguments, then env."""

from __future__ import annotations

import pytest

from streamload.dataset.topology import topology
from streamload.errors import ConfigError


def test_topology_comes_from_arguments_then_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Explicit rank/world_size win over RANK/WORLD_SIZE, which win over a single process."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert (topology().rank, topology().world_size) == (0, 1)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    here = topology()
    assert (here.rank, here.world_size, here.local_rank, here.local_world_size) == (3, 8, 1, 2)
    assert (topology(1, 2).rank, topology(1, 2).world_size) == (1, 2)


@pytest.mark.parametrize(
    ("env", "args", "message"),
    [
        ({"WORLD_SIZE": "four"}, {}, "WORLD_SIZE"),
        ({"RANK": "4", "WORLD_SIZE": "4"}, {}, "rank from RANK/WORLD_SIZE"),
        ({}, {"rank": 1}, "both or neither"),
        ({}, {"rank": 2, "world_size": 2}, "rank from arguments"),
        ({}, {"rank": 0, "world_size": 0}, "world_size from arguments"),
    ],
)
def test_bad_topology_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], args: dict[str, int], message: str
) -> None:
    """A malformed environment or inconsistent arguments name their source."""
    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=message):
        topology(**args)
