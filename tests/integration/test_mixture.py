"""MixedDataset through StreamLoader: exact proportions per step and per rank, each source's own
epochs, resume after every step and on other topologies, weight changes, refusals, stats."""

from __future__ import annotations

import json
import warnings
from collections import Counter
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import streamload as sl
from tests.conformance import check_resume

SIZES = {"web": 120, "code": 45, "books": 20}
OFFSET = {"web": 0, "code": 1000, "books": 2000}  # a row's id names its source: id // 1000
WEIGHTS = {"web": 0.5, "code": 0.3, "books": 0.2}
BATCH = 8


def _write(root: Path, name: str, n: int, offset: int, text: bool = True) -> str:
    with sl.ShardWriter(str(root / name), shard_size="1KiB") as w:
        for i in range(n):
            row: dict[str, Any] = {"id": offset + i, "tok": np.full(4, i, dtype=np.int32)}
            if text:
                row["text"] = f"{name}-{i}"
            w.write(row)
    return str(root / name)


@pytest.fixture(scope="module")
def urls(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("mixture")
    return {name: _write(root, name, n, OFFSET[name]) for name, n in SIZES.items()}


def _mix(urls: dict[str, str], weights: dict[str, float] | None = None, **kwargs: Any) -> Any:
    source_kwargs = kwargs.pop("source_kwargs", {})
    sources = {n: sl.StreamingDataset(u, **source_kwargs.get(n, {})) for n, u in urls.items()}
    return sl.MixedDataset(sources, weights=weights or WEIGHTS, **kwargs)


def _loader(mix: Any, num_workers: int = 0, **kwargs: Any) -> sl.StreamLoader:
    kwargs.setdefault("batch_size", BATCH)
    if num_workers:
        kwargs.update(num_workers=num_workers, multiprocessing_context="fork", timeout=60)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # more workers than the 2 CPUs here
        return sl.StreamLoader(mix, **kwargs)


def _source(i: int) -> str:
    return ("web", "code", "books")[i // 1000]


def _ids(batch: Any) -> list[int]:
    return [int(i) for i in batch["id"].tolist()]


def _counts(ids: list[int]) -> dict[str, int]:
    found = Counter(_source(i) for i in ids)
    return {n: found.get(n, 0) for n in SIZES}


def _bounds(weight: float, size: int) -> tuple[int, int]:
    exact = Fraction(weight) * size
    return int(exact), -int(-exact // 1)


def test_every_step_takes_floor_or_ceil_and_every_prefix_stays_within_one(
    urls: dict[str, str],
) -> None:
    """Each batch of 8 takes floor or ceil of w x 8 from each source; after every batch each
    source's total is within one of w x position; len() is samples and its batch count."""
    mix = _mix(urls, samples=203)
    loader = _loader(mix)
    assert len(mix) == 203 and len(loader) == 26
    totals = dict.fromkeys(SIZES, 0)
    position = 0
    for batch in loader:
        ids = _ids(batch)
        for name, count in _counts(ids).items():
            lo, hi = _bounds(mix.weights[name], len(ids))
            assert lo <= count <= hi, (name, count, len(ids))
            totals[name] += count
        position += len(ids)
        for name, total in totals.items():
            assert abs(total - mix.weights[name] * position) < 1 + 1e-9
    assert position == 203


def test_each_source_repeats_nothing_within_its_own_epochs(urls: dict[str, str]) -> None:
    """Over two mixture epochs the small sources wrap several times: every run of n_s draws of
    source s is a permutation of its ids, each source epoch a new one; the big source is
    still in its first epoch."""
    mix = _mix(urls, samples=150)
    seen: dict[str, list[int]] = {n: [] for n in SIZES}
    loader = _loader(mix)
    for epoch in range(2):
        mix.set_epoch(epoch)
        for batch in loader:
            for i in _ids(batch):
                seen[_source(i)].append(i - OFFSET[_source(i)])
    assert len(seen["web"]) < 2 * SIZES["web"]
    for name, draws in seen.items():
        n = SIZES[name]
        epochs = [draws[a : a + n] for a in range(0, len(draws) - n + 1, n)]
        assert all(sorted(e) == list(range(n)) for e in epochs), name
        tail = draws[len(epochs) * n :]
        assert len(set(tail)) == len(tail)
        if len(epochs) > 1:
            assert len({tuple(e) for e in epochs}) > 1, name


@pytest.mark.parametrize("num_workers", [2])
def test_workers_and_routes_give_the_same_batches(urls: dict[str, str], num_workers: int) -> None:
    """num_workers=2 (also persistent) yields exactly the num_workers=0 batches, and a source
    transform (per-sample route) changes the values but not which rows come."""
    mix = _mix(urls, samples=100)
    expected = [_ids(b) for b in _loader(mix)]
    assert [_ids(b) for b in _loader(_mix(urls, samples=100), num_workers)] == expected
    persistent = _loader(_mix(urls, samples=100), num_workers, persistent_workers=True)
    assert [_ids(b) for b in persistent] == expected
    transformed = _mix(
        urls, samples=100, source_kwargs={"code": {"transform": lambda s: {**s, "id": s["id"]}}}
    )
    assert [_ids(b) for b in _loader(transformed, num_workers)] == expected


@pytest.mark.parametrize("num_workers", [0, 2])
def test_restoring_after_every_step_continues_the_uninterrupted_run(
    urls: dict[str, str], num_workers: int
) -> None:
    """State after step k (mid-epoch, epoch end, next epoch), through JSON, restored into a
    fresh mixture and loader, yields exactly the rest of the uninterrupted run, for every k."""

    def make() -> tuple[sl.StreamLoader, Any]:
        mix = _mix(urls, samples=61)
        return _loader(mix, num_workers), mix

    check_resume(make, epochs=2)


def _run_ranks(
    urls: dict[str, str], world: int, state: dict[str, Any] | None, steps: int | None
) -> tuple[list[list[list[int]]], dict[str, Any] | None]:
    """Each rank's batches (a loader per rank), stopping after `steps`; the state after."""
    per_rank, states = [], []
    for rank in range(world):
        mix = _mix(urls, samples=160, shuffle=False, rank=rank, world_size=world)
        loader = _loader(mix)
        if state is not None:
            loader.load_state_dict(state)
        batches = []
        for batch in loader:
            batches.append(_ids(batch))
            if steps is not None and len(batches) == steps:
                break
        states.append(json.loads(json.dumps(loader.state_dict())))
        per_rank.append(batches)
    assert all(s == states[0] for s in states)
    return per_rank, states[0]


def test_elastic_resume_from_four_ranks_to_two_draws_every_source_exactly_once(
    urls: dict[str, str],
) -> None:
    """Four ranks stop after 2 steps with identical states; two ranks finish the epoch from it:
    every global step takes floor/ceil of w x its size from each source, each rank's slice
    floor/ceil of the step's counts, and each source's draws are 0, 1, 2, ... with no gap or
    repeat (shuffle=False makes draw k of a source its k-th row, modulo its size)."""
    first, state = _run_ranks(urls, 4, None, 2)
    assert state is not None and state["position"] == 2 * 4 * BATCH
    second, _ = _run_ranks(urls, 2, state, None)
    draws: dict[str, list[int]] = {n: [] for n in SIZES}
    for ranks in (first, second):
        for step in range(len(ranks[0])):
            batch = [i for r in ranks for i in r[step]]
            counts = _counts(batch)
            for name, count in counts.items():
                lo, hi = _bounds(WEIGHTS[name], len(batch))
                assert lo <= count <= hi
                for r in ranks:
                    share = Fraction(count * len(r[step]), len(batch))
                    assert int(share) <= _counts(r[step])[name] <= -int(-share // 1)
            for i in batch:
                draws[_source(i)].append(i - OFFSET[_source(i)])
    for name, got in draws.items():
        n = SIZES[name]
        assert sorted(got) == sorted(k % n for k in range(len(got))), name
    assert sum(len(d) for d in draws.values()) == 160


def test_resume_with_more_workers_continues_exactly(urls: dict[str, str]) -> None:
    """2 workers stop after 3 batches; 3 workers (and 0) continue with exactly the batches the
    uninterrupted run would have given."""
    full = [_ids(b) for b in _loader(_mix(urls, samples=90), 2)]
    loader = _loader(_mix(urls, samples=90), 2)
    iterator = iter(loader)
    got = [_ids(next(iterator)) for _ in range(3)]
    state = json.loads(json.dumps(loader.state_dict()))
    iterator.shutdown()  # type: ignore[attr-defined]
    for workers in (3, 0):
        restored = _loader(_mix(urls, samples=90), workers)
        restored.load_state_dict(state)
        assert got + [_ids(b) for b in restored] == full


def test_changing_weights_on_resume_continues_every_source_under_the_new_weights(
    urls: dict[str, str],
) -> None:
    """A state saved under 50/30/20 loaded into a 20/30/50 mixture: each source continues at
    its cursor (no draw skipped or repeated), the next steps follow the new weights, and the
    state records both segments."""
    loader = _loader(_mix(urls, samples=160, shuffle=False))
    iterator = iter(loader)
    before = [_ids(next(iterator)) for _ in range(5)]
    state = json.loads(json.dumps(loader.state_dict()))
    new = {"web": 0.2, "code": 0.3, "books": 0.5}
    mix = _mix(urls, new, samples=160, shuffle=False)
    restored = _loader(mix)
    restored.load_state_dict(state)
    after = [_ids(b) for b in restored]
    for batch in after[:-1]:
        for name, count in _counts(batch).items():
            lo, hi = _bounds(new[name], len(batch))
            assert lo <= count <= hi
    draws: dict[str, list[int]] = {n: [] for n in SIZES}
    for i in (i for b in before + after for i in b):
        draws[_source(i)].append(i - OFFSET[_source(i)])
    for name, got in draws.items():
        assert got == [k % SIZES[name] for k in range(len(got))], name
    segments = restored.state_dict()["segments"]
    assert len(segments) == 2 and segments[1]["position"] == 5 * BATCH


def _source_draws(urls: dict[str, str], name: str, window: int, count: int) -> list[int]:
    """The first ``count`` draws of source ``name`` shuffled within ``window`` shards: a
    one-source mixture of the same name and seed draws exactly that source's permutation."""
    mix = _mix({name: urls[name]}, {name: 1}, samples=count, shuffle_block={name: window})
    return [i - OFFSET[name] for b in _loader(mix) for i in _ids(b)]


def test_resume_with_other_weights_workers_and_batch_size_keeps_every_sources_permutation(
    urls: dict[str, str],
) -> None:
    """Shuffled sources get windows of 8/5/3 shards from 50/30/20 at the start; a state after 5
    steps loaded into a 20/30/50 mixture (which alone would choose 3/5/8) read by 2 persistent
    workers (started before the load) at another batch size keeps those windows: each source's draws before and after the resume
    are exactly its permutation's prefix (nothing skipped or repeated within a source epoch),
    which the new weights' windows would not have given."""
    loader = _loader(_mix(urls, samples=160))
    iterator = iter(loader)
    before = [_ids(next(iterator)) for _ in range(5)]
    state = json.loads(json.dumps(loader.state_dict()))
    assert state["windows"] == {"web": 8, "code": 5, "books": 3}
    new = {"web": 0.2, "code": 0.3, "books": 0.5}
    assert _mix(urls, new).windows == {"web": 3, "code": 5, "books": 8}
    restored = _loader(
        _mix(urls, new, samples=160), num_workers=2, batch_size=6, persistent_workers=True
    )
    assert len([_ids(b) for b in restored]) == 27  # the workers start with windows 3/5/8
    restored.load_state_dict(state)
    after = [_ids(b) for b in restored]
    draws: dict[str, list[int]] = {n: [] for n in SIZES}
    for i in (i for b in before + after for i in b):
        draws[_source(i)].append(i - OFFSET[_source(i)])
    for name, got in draws.items():
        assert got == _source_draws(urls, name, state["windows"][name], len(got)), name
    assert draws["web"] != _source_draws(urls, "web", 3, len(draws["web"]))
    assert restored.state_dict()["windows"] == state["windows"]


def test_a_state_whose_sources_changed_raises_state_error_naming_them(
    urls: dict[str, str], tmp_path: Path
) -> None:
    """Another dataset under a name, a source added or removed, or other mixture settings:
    StateError naming what changed."""
    state = _loader(_mix(urls, samples=50)).state_dict()
    other = _write(tmp_path, "code2", 45, 1000)
    swapped = dict(urls, code=other)
    with pytest.raises(sl.StateError, match="'code'"):
        _loader(_mix(swapped, samples=50)).load_state_dict(state)
    fewer = {n: u for n, u in urls.items() if n != "books"}
    with pytest.raises(sl.StateError, match="'books' \\(only in the state\\)"):
        _loader(_mix(fewer, {"web": 1, "code": 1}, samples=50)).load_state_dict(state)
    with pytest.raises(sl.StateError, match="seed"):
        _loader(_mix(urls, samples=50, seed=3)).load_state_dict(state)
    plain = _loader(sl.StreamingDataset(urls["web"])).state_dict()
    with pytest.raises(sl.StateError, match="not a mixture state"):
        _loader(_mix(urls, samples=50)).load_state_dict(plain)


def test_sources_with_other_columns_are_a_format_error_unless_common_ones_are_selected(
    urls: dict[str, str], tmp_path: Path
) -> None:
    """A source without the text column: FormatError naming both sources and the column;
    selecting the common columns on every source mixes them."""
    bare = _write(tmp_path, "bare", 30, 3000, text=False)
    with pytest.raises(sl.FormatError, match=r"only 'web' has \['text'\]"):
        sl.MixedDataset(
            {"web": sl.StreamingDataset(urls["web"]), "bare": sl.StreamingDataset(bare)}
        )
    mix = sl.MixedDataset(
        {
            "web": sl.StreamingDataset(urls["web"], columns=["id", "tok"]),
            "bare": sl.StreamingDataset(bare, columns=["id", "tok"]),
        },
        samples=40,
    )
    batches = list(_loader(mix))
    assert sum(len(b["id"]) for b in batches) == 40 and set(batches[0]) == {"id", "tok"}


def test_source_column_names_each_rows_source_and_stats_count_per_source(
    urls: dict[str, str],
) -> None:
    """source_column="source" names each row's source (the id agrees); loader.stats() counts
    the samples and bytes each source delivered (a row's arrays, 8 + 16 bytes, plus the
    characters of its text and source name)."""
    for workers in (0, 2):
        mix = _mix(urls, samples=80, source_column="source")
        loader = _loader(mix, workers)
        delivered: Counter[str] = Counter()
        nbytes: Counter[str] = Counter()
        for batch in loader:
            assert [_source(i) for i in _ids(batch)] == batch["source"]
            delivered.update(batch["source"])
            for text, source in zip(batch["text"], batch["source"], strict=True):
                nbytes[source] += 8 + 16 + len(text) + len(source)
        sources = loader.stats()["sources"]
        assert {n: s["samples"] for n, s in sources.items()} == dict(delivered)
        assert {n: s["bytes"] for n, s in sources.items()} == dict(nbytes)


def test_subset_sources_draw_only_from_their_subset(urls: dict[str, str]) -> None:
    """A source with subset=10 cycles through those 10 rows only, each source epoch a
    permutation of them."""
    mix = _mix(urls, samples=100, source_kwargs={"code": {"subset": 10}})
    code = [i for b in _loader(mix) for i in _ids(b) if _source(i) == "code"]
    assert len(set(code)) == 10 and len(code) == 30
    assert all(sorted(code[a : a + 10]) == sorted(set(code)) for a in range(0, 30, 10))


def test_drop_last_drops_the_partial_step_and_the_next_epoch_continues_the_cursors(
    urls: dict[str, str],
) -> None:
    """drop_last drops the tail step; epoch 1 starts where epoch 0's cursors stopped (no source
    re-reads what it gave in epoch 0 before its own epoch ends)."""
    mix = _mix(urls, samples=61, shuffle=False)
    loader = _loader(mix, drop_last=True)
    epochs = []
    for epoch in range(2):
        mix.set_epoch(epoch)
        epochs.append([i for b in loader for i in _ids(b)])
    assert len(epochs[0]) == len(epochs[1]) == 56
    web = [i for e in epochs for i in e if _source(i) == "web"]
    assert web == list(range(len(web)))


def _write_tokens(root: Path, name: str, docs: int, offset: int) -> tuple[str, int]:
    """Documents of 1..11 tokens whose values count up from ``offset`` across the stream, so
    a block's first token names its source and its block id. Returns (url, blocks of 8)."""
    count = 0
    with sl.ShardWriter(str(root / name), shard_size="512B") as w:
        for i in range(docs):
            n = 1 + i % 11
            w.write({"tokens": np.arange(offset + count, offset + count + n, dtype=np.int32)})
            count += n
    return str(root / name), count // 8


def test_token_block_sources_mix_exactly_and_each_block_once_per_source_epoch(
    tmp_path: Path,
) -> None:
    """Token streams mix like any source: every batch takes its exact share of blocks from each,
    and within a source epoch each of that source's blocks comes once (workers or not)."""
    made = {n: _write_tokens(tmp_path, n, 60, o) for n, o in (("a", 0), ("b", 100_000))}
    for workers in (0, 2):
        sources = {
            n: sl.StreamingDataset(u, tokens="tokens", block_size=8) for n, (u, _) in made.items()
        }
        assert sum(s.num_shards for s in sources.values()) > 4  # blocks span shards
        mix = sl.MixedDataset(sources, weights={"a": 0.75, "b": 0.25}, samples=64, seed=3)
        drawn: dict[str, list[int]] = {"a": [], "b": []}
        for batch in _loader(mix, workers):
            tokens = batch["tokens"].numpy()
            assert tokens.shape == (BATCH, 8)
            assert (np.diff(tokens, axis=1) == 1).all()  # whole blocks of one stream
            names = ["a" if t < 100_000 else "b" for t in tokens[:, 0]]
            assert Counter(names) == {"a": 6, "b": 2}
            for name, first in zip(names, tokens[:, 0].tolist(), strict=True):
                drawn[name].append((first - (0 if name == "a" else 100_000)) // 8)
        for name, (_, blocks) in made.items():
            ids = drawn[name]
            for start in range(0, len(ids), blocks):  # each source epoch: distinct blocks
                epoch = ids[start : start + blocks]
                assert len(set(epoch)) == len(epoch) and set(epoch) <= set(range(blocks))
            assert len(ids) < blocks or sorted(ids[:blocks]) == list(range(blocks))


def test_refusals_around_token_streams_and_appends(urls: dict[str, str], tmp_path: Path) -> None:
    """subset= on a token stream is a ConfigError (it selects samples, not blocks); a loader over
    a mixture refuses allow_append=True with a StateError instead of guessing."""
    url, _ = _write_tokens(tmp_path, "t", 20, 0)
    with pytest.raises(sl.ConfigError, match="subset="):
        sl.StreamingDataset(url, tokens="tokens", block_size=8, subset=5)
    loader = _loader(_mix(urls, samples=40))
    state = loader.state_dict()
    with pytest.raises(sl.StateError, match="allow_append"):
        loader.load_state_dict(state, allow_append=True)
    loader.load_state_dict(state)  # without it, the same state loads


def test_set_weights_between_epochs_continues_every_source_under_the_new_weights(
    urls: dict[str, str],
) -> None:
    """Mid-run weight change (set_epoch(1), then set_weights): epoch 1's batches take the new
    shares exactly, and every source continues from its cursor (unshuffled: each source's ids
    run on in index order, into its own next epoch)."""
    mix = _mix(urls, samples=40, shuffle=False)
    loader = _loader(mix)
    ids = [i for b in loader for i in _ids(b)]
    mix.set_epoch(1)
    mix.set_weights({"web": 0.25, "code": 0.25, "books": 0.5})
    for batch in loader:
        assert _counts(_ids(batch)) == {"web": 2, "code": 2, "books": 4}
        ids += _ids(batch)
    for name, size in SIZES.items():
        drawn = [i - OFFSET[name] for i in ids if _source(i) == name]
        assert drawn == [k % size for k in range(len(drawn))], name
    assert len([i for i in ids if _source(i) == "books"]) == 8 + 20
