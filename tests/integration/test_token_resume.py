"""Token streams resume exactly: after every step, across the epoch boundary, with workers, and
on another number of ranks (4 -> 2), for blocks and for packed rows."""

from __future__ import annotations

import json
import warnings
from collections import Counter
from typing import Any

import numpy as np
import pytest
from conformance import check_resume

import streamload as sl

BATCH = 3
MODES = {
    "blocks": {"block_size": 40},
    "packed": {"seq_len": 48, "pack": True},
}


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """~2.4k tokens in ~120 documents over several shards; token value = corpus position."""
    root = tmp_path_factory.mktemp("tokens")
    rng = np.random.default_rng(7)
    at = 0
    with sl.ShardWriter(str(root), shard_size="1KiB") as w:
        for n in rng.integers(1, 41, 120).tolist():
            w.write({"tokens": np.arange(at, at + n, dtype=np.int32)})
            at += n
    return str(root)


def _dataset(url: str, mode: str, **kwargs: Any) -> sl.StreamingDataset:
    return sl.StreamingDataset(
        url, tokens="tokens", shuffle=True, seed=11, shuffle_block=2, **MODES[mode], **kwargs
    )


def _loader(ds: sl.StreamingDataset, workers: int = 0, batch_size: int = BATCH) -> sl.StreamLoader:
    kwargs: dict[str, Any] = {}
    if workers:
        kwargs = {"num_workers": workers, "multiprocessing_context": "fork", "timeout": 60}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return sl.StreamLoader(ds, batch_size=batch_size, **kwargs)


def _key(batch: dict[str, Any]) -> list[tuple[int, ...]]:
    """Each item of a batch as a hashable tuple of its tokens (and segments when packed)."""
    tokens = batch["tokens"].numpy()
    if "segment_ids" in batch:
        tokens = np.concatenate([tokens, batch["segment_ids"].numpy()], axis=1)
    return [tuple(row) for row in tokens.tolist()]


def _steps(
    loader: sl.StreamLoader, limit: int | None = None
) -> tuple[list[Any], list[dict[str, Any]]]:
    """Batches of one pass (up to ``limit``) and the state after each, through JSON."""
    batches, states = [], []
    for batch in loader:
        batches.append(_key(batch))
        states.append(json.loads(json.dumps(loader.state_dict())))
        if limit is not None and len(batches) == limit:
            break
    return batches, states


def _first_tokens(batch: dict[str, Any]) -> list[int]:
    """Each item's first token: unique per block and per packed row (tokens are positions)."""
    return [int(t) for t in batch["tokens"][:, 0].tolist()]


@pytest.mark.parametrize("mode", sorted(MODES))
def test_resume_after_every_step_continues_exactly(url: str, mode: str) -> None:
    """The shared conformance check: a state taken after any step of two epochs restores into
    a fresh loader and replays exactly the rest of the uninterrupted run."""

    def make() -> tuple[sl.StreamLoader, sl.StreamingDataset]:
        ds = _dataset(url, mode)
        return _loader(ds, batch_size=8), ds

    run = check_resume(make, epochs=2, ids=_first_tokens)
    assert len(run) > 10


@pytest.mark.parametrize("mode", sorted(MODES))
def test_resume_with_workers_matches_a_single_process_run(url: str, mode: str) -> None:
    """Two worker processes yield the same batches, and resume at the same places."""
    full, states = _steps(_loader(_dataset(url, mode)))
    with_workers, _ = _steps(_loader(_dataset(url, mode), workers=2))
    assert with_workers == full
    k = len(full) // 2
    loader = _loader(_dataset(url, mode), workers=2)
    loader.load_state_dict(states[k - 1])
    assert _steps(loader)[0] == full[k:]


@pytest.mark.parametrize("mode", sorted(MODES))
def test_elastic_resume_from_4_ranks_on_2_loses_and_repeats_nothing(url: str, mode: str) -> None:
    """4 ranks take 3 steps, then 2 ranks finish the epoch from rank 0's state: every item of the
    epoch is read exactly once (plus the plan's tail padding, fewer than the ranks)."""
    items = _steps(_loader(_dataset(url, mode), batch_size=1))[0]
    everything = Counter(row for batch in items for row in batch)
    seen: Counter[tuple[int, ...]] = Counter()
    states = []
    for rank in range(4):
        ds = _dataset(url, mode, rank=rank, world_size=4)
        batches, rank_states = _steps(_loader(ds), limit=3)
        seen.update(row for batch in batches for row in batch)
        states.append(rank_states[-1])
    assert all(s == states[0] for s in states)
    assert states[0]["position"] == 4 * 3 * BATCH
    padding = 0
    for rank in range(2):
        ds = _dataset(url, mode, rank=rank, world_size=2)
        loader = _loader(ds)
        loader.load_state_dict(states[0])
        batches, _ = _steps(loader)
        seen.update(row for batch in batches for row in batch)
        padding += loader.padded_samples
    assert sum(seen.values()) == sum(everything.values()) + padding
    assert set(seen) == set(everything)
    assert all(c == 1 for c in everything.values())
