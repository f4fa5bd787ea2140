"""Under torch.distributed (gloo on 127.0.0.1): 4 ranks x 2 workers read every sample exactly
once with equal step counts, and a 4-rank job stopped mid-epoch resumes on 2 ranks."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import streamload as sl

RANK_SCRIPT = Path(__file__).with_name("distributed_rank.py")
N = 203  # batch 5 on 4 ranks: 10 full steps, then a tail of 3 ids for 4 ranks (one repeat)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _job(url: str, world_size: int, out: Path, *extra: str) -> list[dict[str, Any]]:
    """Run one torch.distributed job of `world_size` rank processes; their JSON results."""
    port = str(_free_port())
    out.mkdir()
    files = [out / f"rank{r}.json" for r in range(world_size)]
    procs = [
        subprocess.Popen(
            [sys.executable, str(RANK_SCRIPT), url, port, str(r), str(world_size), str(f), *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r, f in enumerate(files)
    ]
    try:
        logs = [p.communicate(timeout=90)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-3000:]
    return [json.loads(f.read_text()) for f in files]


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("distributed")
    with sl.ShardWriter(str(root), shard_size="1KiB") as w:
        for i in range(N):
            w.write({"id": i})
    return str(root)


@pytest.mark.timeout(180)
def test_four_ranks_then_two_read_every_sample_once_with_equal_steps(
    url: str, tmp_path: Path
) -> None:
    """4 ranks x 2 workers: equal steps on every rank, every sample exactly once (plus the
    reported padding), step-major reading equals the global order, identical states on all
    ranks; a job stopped after 3 steps resumes on 2 ranks without loss or repeats."""
    whole = _job(url, 4, tmp_path / "whole")
    order = whole[0]["order"]
    steps = {len(r["batches"]) for r in whole}
    assert steps == {11}
    assert sum(r["padded"] for r in whole) == 1
    counts = Counter(i for r in whole for b in r["batches"] for i in b)
    assert set(counts) == set(range(N)) and sum(counts.values()) == N + 1
    step_major = [i for s in range(11) for r in whole for i in r["batches"][s]][:N]
    assert step_major == order
    assert all(r["state"] == whole[0]["state"] for r in whole)
    assert (whole[0]["state"]["epoch"], whole[0]["state"]["position"]) == (1, 0)

    first = _job(url, 4, tmp_path / "first", "3")
    assert all(r["state"] == first[0]["state"] for r in first)
    assert first[0]["state"]["position"] == 3 * 4 * 5
    state_file = tmp_path / "state.json"
    state_file.write_text(json.dumps(first[0]["state"]))
    second = _job(url, 2, tmp_path / "second", "-", str(state_file))
    assert len(second[0]["batches"]) == len(second[1]["batches"])
    padding = sum(r["padded"] for r in second)
    seen = Counter(i for r in first + second for b in r["batches"] for i in b)
    assert set(seen) == set(range(N)) and sum(seen.values()) == N + padding
