"""StreamLoader/StreamingDataset resume: exact continuation after any step, across world sizes,
worker counts and epoch boundaries, and StateError for states that cannot apply."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conformance import check_resume
from torch.utils.data import Dataset

import streamload as sl
from streamload import StateError, StreamingDataset, StreamLoader

# DataLoader's too-many-workers warning depends on the CPUs here (a one-core cpuset warns for 2).
CPU_COUNT_WARNING = "ignore:This DataLoader will create:UserWarning"

N = 61  # prime: every batch size and world size leaves a tail
BATCH = 8


def _write(root: Path, n: int = N, offset: int = 0) -> str:
    with sl.ShardWriter(str(root), shard_size="1KiB") as w:
        for i in range(n):
            w.write({"id": i + offset, "tok": np.full(4, i, dtype=np.int32)})
    return str(root)


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return _write(tmp_path_factory.mktemp("resume"))


def _dataset(url: str, **kwargs: Any) -> StreamingDataset:
    kwargs.setdefault("shuffle", True)
    kwargs.setdefault("seed", 5)
    return StreamingDataset(url, **kwargs)


def _loader(ds: StreamingDataset, num_workers: int = 0, **kwargs: Any) -> StreamLoader:
    kwargs.setdefault("batch_size", BATCH)
    if num_workers:
        kwargs.update(num_workers=num_workers, multiprocessing_context="fork", timeout=60)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # more workers than the 2 CPUs here
        return StreamLoader(ds, **kwargs)


def _ids(batch: Any) -> list[int]:
    return batch["id"].tolist() if isinstance(batch, dict) else list(batch)


def _take(loader: StreamLoader, k: int) -> tuple[list[list[int]], dict[str, Any]]:
    """The first k batches of a pass and the state after them (through JSON, as a file would)."""
    iterator = iter(loader)
    got = [_ids(next(iterator)) for _ in range(k)]
    state = json.loads(json.dumps(loader.state_dict()))
    if hasattr(iterator, "shutdown"):
        iterator.shutdown()
    return got, state


def _rest(url: str, state: dict[str, Any], num_workers: int = 0, **kwargs: Any) -> list[list[int]]:
    """A fresh dataset and loader restored from state, run to the end of the pass."""
    ds_kwargs = {k: kwargs.pop(k) for k in ("rank", "world_size", "shuffle_mode") if k in kwargs}
    loader = _loader(_dataset(url, **ds_kwargs), num_workers, **kwargs)
    loader.load_state_dict(state)
    return [_ids(b) for b in loader]


def _collate_ids(samples: list[Any]) -> list[int]:
    return [int(s["id"]) for s in samples]


ROUTES = {
    # the columnar route: no transform, default collate
    "columnar": {},
    # the per-sample route: a transform and a custom collate_fn
    "samples": {"transform": lambda s: {"id": s["id"]}, "collate_fn": _collate_ids},
}
WORKERS = {
    "in-process": {},
    "2 workers": {"num_workers": 2},
    "2 persistent": {"num_workers": 2, "persistent_workers": True},
}


@pytest.mark.parametrize("workers", list(WORKERS))
@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize(("shuffle_mode", "drop_last"), [("full", False), ("block", True)])
def test_resume_conformance_after_every_step(
    url: str, route: str, workers: str, shuffle_mode: str, drop_last: bool
) -> None:
    """Every route x worker setup: the state after any step of a two-epoch run (mid-epoch, an
    epoch's end, into the next epoch), restored into a fresh loader, yields exactly the rest of
    the uninterrupted run (workers' prefetch never leaks into the state)."""
    route_kwargs = dict(ROUTES[route])
    transform = route_kwargs.pop("transform", None)
    worker_kwargs = dict(WORKERS[workers])
    num_workers = worker_kwargs.pop("num_workers", 0)

    def make() -> tuple[StreamLoader, StreamingDataset]:
        ds = _dataset(url, shuffle_mode=shuffle_mode, shuffle_block=2, transform=transform)
        loader = _loader(ds, num_workers, drop_last=drop_last, **route_kwargs, **worker_kwargs)
        return loader, ds

    run = check_resume(make, epochs=2)
    steps = N // BATCH if drop_last else -(-N // BATCH)
    assert len(run) == 2 * steps


def test_state_after_the_last_batch_starts_the_next_epoch(url: str) -> None:
    """After an epoch's last batch the state names the next epoch at position 0; restoring it
    yields that epoch's order, and a mid-epoch state of epoch 1 continues epoch 1."""
    loader = _loader(_dataset(url))
    first = [i for b in loader for i in _ids(b)]
    state = loader.state_dict()
    assert (state["epoch"], state["position"]) == (1, 0)
    ds = _dataset(url)
    restored = _loader(ds)
    restored.load_state_dict(state)
    assert ds.epoch == 1
    second = [i for b in restored for i in _ids(b)]
    assert second == ds.sample_order(1).tolist() and second != first

    ds = _dataset(url)
    ds.set_epoch(1)
    got, state = _take(_loader(ds), 3)
    assert (state["epoch"], state["position"]) == (1, 3 * BATCH)
    assert [i for b in got for i in b] + [i for b in _rest(url, state) for i in b] == second


def test_state_at_the_end_position_starts_the_next_epoch(url: str) -> None:
    """A state whose position is the end of its epoch (e.g. saved by a rank that stopped on the
    last step) starts the next epoch."""
    ds = _dataset(url)
    state = ds.state_dict()
    state.update(epoch=2, position=N)
    loader = _loader(ds)
    loader.load_state_dict(state)
    assert ds.epoch == 3
    assert [i for b in loader for i in _ids(b)] == ds.sample_order(3).tolist()


def test_elastic_resume_from_four_ranks_to_two_loses_and_repeats_nothing(url: str) -> None:
    """Four ranks stop after 1 step with identical states; two ranks resume from it; together
    they yield every sample once, plus only the padding the plans report."""
    states, seen = [], Counter[int]()
    for rank in range(4):
        got, state = _take(_loader(_dataset(url, rank=rank, world_size=4)), 1)
        states.append(state)
        seen.update(i for b in got for i in b)
    assert all(s == states[0] for s in states) and states[0]["position"] == 4 * BATCH
    steps, padding = [], 0
    for rank in range(2):
        loader = _loader(_dataset(url, rank=rank, world_size=2))
        loader.load_state_dict(states[0])
        batches = [_ids(b) for b in loader]
        steps.append(len(batches))
        padding += loader.padded_samples
        seen.update(i for b in batches for i in b)
    assert steps[0] == steps[1] > 0
    assert len(_loader(_dataset(url, rank=0, world_size=2))) == -(-N // (2 * BATCH))
    assert len(_loader(_dataset(url, rank=3, world_size=4), drop_last=True)) == N // (4 * BATCH)
    assert set(seen) == set(range(N))
    assert sum(seen.values()) == N + padding


def test_resume_on_another_world_size_keeps_the_global_order(url: str) -> None:
    """Ranks' batches read step by step, rank by rank, continue the same global order after a
    4 -> 3 rank restart (the order does not depend on the world size)."""
    ds = _dataset(url)
    order = ds.sample_order().tolist()
    per_rank = [_take(_loader(_dataset(url, rank=r, world_size=4)), 1) for r in range(4)]
    consumed = [i for got, _ in per_rank for i in got[0]]
    rest = [_rest(url, per_rank[0][1], rank=r, world_size=3) for r in range(3)]
    plan = StreamLoader(_dataset(url, rank=0, world_size=3), batch_size=BATCH)
    plan.load_state_dict(per_rank[0][1])
    padded = plan.epoch_plan().padding
    for step in range(len(rest[0])):
        for r in range(3):
            if step == len(rest[0]) - 1 and r >= 3 - padded:
                continue
            consumed += rest[r][step]
    assert consumed == order


def test_resume_with_more_workers_continues_exactly(url: str) -> None:
    """2 workers stop after 3 batches; 3 workers (and 0) continue with exactly the batches the
    uninterrupted run would have given."""
    full = [_ids(b) for b in _loader(_dataset(url), 2)]
    got, state = _take(_loader(_dataset(url), 2), 3)
    assert got + _rest(url, state, num_workers=3) == full
    assert got + _rest(url, state, num_workers=0) == full


def test_persistent_workers_follow_a_state_loaded_between_epochs(url: str) -> None:
    """A persistent pool that already served an epoch continues a state loaded afterwards
    (the plan rides along to the workers at each pass)."""
    ds = _dataset(url)
    loader = _loader(ds, 2, persistent_workers=True)
    assert sorted(i for b in loader for i in _ids(b)) == list(range(N))
    other = _dataset(url)
    other.set_epoch(1)
    got, state = _take(_loader(other), 3)
    loader.load_state_dict(state)
    rest = [_ids(b) for b in loader]
    assert [i for b in got + rest for i in b] == ds.sample_order(1).tolist()


def test_resume_with_another_batch_size_continues_the_order(url: str) -> None:
    """The position counts samples, so a restart with another batch size continues the order."""
    order = _dataset(url).sample_order().tolist()
    got, state = _take(_loader(_dataset(url)), 2)
    rest = _rest(url, state, batch_size=5)
    assert [i for b in got + rest for i in b] == order
    assert all(len(b) == 5 for b in rest[:-1])


def test_transform_and_custom_collate_passes_resume_too(url: str) -> None:
    """A dataset transform and a custom collate_fn (per-sample route) resume exactly as well."""

    def collate(samples: list[Any]) -> list[int]:
        return [int(s) for s in samples]

    def make() -> StreamLoader:
        return _loader(_dataset(url, transform=lambda s: s["id"] * 10), 2, collate_fn=collate)

    full = list(make())
    assert sorted(i for b in full for i in b) == [10 * i for i in range(N)]
    got, state = _take(make(), 4)
    restored = make()
    restored.load_state_dict(state)
    assert got + list(restored) == full


def test_dataset_iteration_resumes_from_a_loaded_state(url: str) -> None:
    """StreamingDataset.load_state_dict makes its next iteration start at the state's position,
    and a later iteration starts the epoch over."""
    ds = _dataset(url)
    _got, state = _take(_loader(ds), 2)
    fresh = _dataset(url)
    fresh.load_state_dict(state)
    assert fresh.state_dict() == state
    assert [s["id"] for s in fresh] == fresh.sample_order().tolist()[2 * BATCH :]
    assert [s["id"] for s in fresh] == fresh.sample_order().tolist()


def test_state_before_any_batch_and_after_set_epoch(url: str) -> None:
    """A new loader's state is its dataset's (epoch, 0); set_epoch moves it; a loaded state
    that no pass has taken yet is reported back unchanged."""
    ds = _dataset(url)
    loader = _loader(ds)
    assert (loader.state_dict()["epoch"], loader.state_dict()["position"]) == (0, 0)
    ds.set_epoch(4)
    assert loader.state_dict()["epoch"] == 4
    state = dict(loader.state_dict(), position=9)
    loader.load_state_dict(state)
    assert loader.state_dict() == state


def test_more_workers_than_batches_warns_only_for_whole_epochs(url: str) -> None:
    """A whole epoch with fewer batches than workers warns (idle workers); a resumed pass that is
    short because it is near its end does not."""
    ds = _dataset(url)
    loader = StreamLoader(
        ds, batch_size=64, num_workers=2, multiprocessing_context="fork", timeout=60
    )
    with pytest.warns(UserWarning, match="1 batches this epoch for 2 workers"):
        assert sum(len(_ids(b)) for b in loader) == N
    _got, state = _take(_loader(_dataset(url)), 7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", "This DataLoader will create", UserWarning)  # CPU count
        assert len(_rest(url, state, num_workers=2)) == 1


def test_fewer_shards_than_ranks_times_workers_split_within_shards(tmp_path: Path) -> None:
    """One shard read by 4 ranks x 2 workers: every sample exactly once, equal steps, no
    warning (splitting a shard costs nothing on the columnar path)."""
    with sl.ShardWriter(str(tmp_path)) as w:
        for i in range(45):
            w.write({"id": i, "tok": np.full(4, i, dtype=np.int32)})
    assert StreamingDataset(str(tmp_path)).num_shards == 1
    seen, steps = Counter[int](), set()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", "This DataLoader will create", UserWarning)  # CPU count
        for rank in range(4):
            ds = StreamingDataset(str(tmp_path), shuffle=True, rank=rank, world_size=4)
            loader = StreamLoader(
                ds, batch_size=4, num_workers=2, multiprocessing_context="fork", timeout=60
            )
            batches = [_ids(b) for b in loader]
            steps.add(len(batches))
            seen.update(i for b in batches for i in b)
    assert steps == {3} and Counter(seen) == Counter(range(45))


def test_shuffle_mode_and_block_default_from_config(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """STREAMLOAD_SHUFFLE_MODE/SHUFFLE_BLOCK set the defaults; keyword arguments win; a bad
    value is a ConfigError naming the setting."""
    monkeypatch.setenv("STREAMLOAD_SHUFFLE_MODE", "block")
    monkeypatch.setenv("STREAMLOAD_SHUFFLE_BLOCK", "3")
    settings = _dataset(url).shuffle_settings
    assert (settings.mode, settings.block) == ("block", 3)
    assert _dataset(url, shuffle_mode="full").shuffle_settings.mode == "full"
    monkeypatch.setenv("STREAMLOAD_SHUFFLE_BLOCK", "0")
    with pytest.raises(sl.ConfigError, match="shuffle_block"):
        _dataset(url)


# -- refusals -------------------------------------------------------------------------------------


def test_state_from_another_seed_or_dataset_raises_state_error(url: str, tmp_path: Path) -> None:
    """A state from other shuffle settings or another dataset is refused, both sides shown."""
    state = _loader(_dataset(url)).state_dict()
    with pytest.raises(StateError, match="seed: state has 5, this dataset has 6"):
        _loader(_dataset(url, seed=6)).load_state_dict(state)
    mode = _dataset(url).shuffle_settings.mode
    other_mode = "full" if mode == "block" else "block"
    with pytest.raises(
        StateError, match=f"mode: state has '{mode}', this dataset has '{other_mode}'"
    ):
        _loader(_dataset(url, shuffle_mode=other_mode)).load_state_dict(state)
    other = _write(tmp_path / "other", offset=1000)
    with pytest.raises(StateError, match="index: state has"):
        _loader(_dataset(other)).load_state_dict(state)
    with pytest.raises(StateError, match="version"):
        _loader(_dataset(url)).load_state_dict(dict(state, version=99))


class _Plain(Dataset[int]):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> int:
        return i


def test_loaders_without_a_plan_refuse_state_dict(url: str) -> None:
    """Sampler-driven loaders, batch_size=None and non-streamload datasets raise StateError
    saying why, instead of a state that would not resume exactly."""
    cases = [
        (StreamLoader(_dataset(url), batch_size=4, shuffle=True), "sampler"),
        (StreamLoader(_dataset(url), batch_size=None), "batch_size=None"),
        (StreamLoader(_Plain(), batch_size=2), "_Plain has no resumable plan"),
    ]
    for loader, message in cases:
        with pytest.raises(StateError, match=message):
            loader.state_dict()
        with pytest.raises(StateError, match=message):
            loader.load_state_dict({})


def test_checkpoint_with_torch_save_round_trips(url: str, tmp_path: Path) -> None:
    """The README recipe: torch.save({"model": ..., "loader": state}) and back with
    weights_only=True (plain ints and strings only)."""
    got, state = _take(_loader(_dataset(url)), 2)
    torch.save({"model": {"w": torch.ones(2)}, "loader": state}, tmp_path / "ckpt.pt")
    loaded = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert loaded["loader"] == state
    full = [_ids(b) for b in _loader(_dataset(url))]
    assert got + _rest(url, loaded["loader"]) == full


def test_readme_checkpoint_recipe_runs_as_written(tmp_path: Path) -> None:
    """The README's checkpoint example (crash, restore from torch.save, finish) runs unchanged
    in a fresh interpreter and checks its own samples."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    match = re.search(r"<!-- checkpoint -->\s*```python\n(.*?)```", readme, re.S)
    assert match, "README has no checkpoint example"
    script = tmp_path / "checkpoint.py"
    script.write_text(match.group(1))
    out = subprocess.run(
        [sys.executable, "-W", "error", "-W", CPU_COUNT_WARNING, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")
