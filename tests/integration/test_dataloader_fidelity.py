"""A DataLoader script moved to StreamLoader sees the same exceptions, warnings and order semantics.

Each test runs torch's DataLoader and StreamLoader on the same dataset in the same test and
compares what a training script observes: the type an exception is caught as (worker exceptions
keep their type, and are also `sl.WorkerError`), the length warning of an IterableDataset copied
into every worker, the start method a global ``multiprocessing.set_start_method`` picks,
``in_order=False`` delivery, and ``StreamLoader[T]`` in annotations.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

import streamload as sl
from streamload import ShardWriter, StreamingDataset, StreamLoader

pytestmark = pytest.mark.timeout(120)

N = 24


# -- exceptions -----------------------------------------------------------------------------------


class ShardUnreadable(Exception):
    """A user exception type (module level, so a worker's exception can name it)."""


class NeedsTwoArguments(Exception):
    """An exception that cannot be rebuilt from one string (DataLoader: RuntimeError)."""

    def __init__(self, path: str, code: int) -> None:
        super().__init__(f"{path}: code {code}")


def _key_error() -> Exception:
    return KeyError("sample 9 has no 'label'")


ERRORS = {
    "KeyError": _key_error,
    "ValueError": lambda: ValueError("bad pixel"),
    "FileNotFoundError": lambda: FileNotFoundError(2, "No such file", "/data/x.jpg"),
    "user type": lambda: ShardUnreadable("cannot decode"),
    "streamload FormatError": lambda: sl.FormatError("shard-00001.arrow: corrupt"),
    "two-argument constructor": lambda: NeedsTwoArguments("/data/x", 5),
}


class Failing(Dataset[Any]):
    """A map-style dataset whose sample 9 raises the chosen exception."""

    def __init__(self, error: str) -> None:
        self.error = error

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> Any:
        if i == 9:
            raise ERRORS[self.error]()
        return np.full(2, i, np.int64)


def _first_error(loader: Any) -> BaseException:
    try:
        for _ in loader:
            pass
    except Exception as exc:
        return exc
    raise AssertionError("the loader raised nothing")


@pytest.mark.parametrize("error", sorted(ERRORS))
@pytest.mark.parametrize("num_workers", [0, 2])
def test_worker_exception_is_caught_as_dataloader_raises_it(num_workers: int, error: str) -> None:
    """The exception a loop sees is of DataLoader's type (the original type, or RuntimeError
    where DataLoader cannot rebuild it), with DataLoader's first message line; with workers it
    is also an sl.WorkerError, without workers it is the original exception itself."""
    kwargs: dict[str, Any] = {"batch_size": 4, "num_workers": num_workers}
    if num_workers:
        kwargs["multiprocessing_context"] = "fork"
    theirs = _first_error(DataLoader(Failing(error), **kwargs))
    ours = _first_error(StreamLoader(Failing(error), **kwargs))
    assert isinstance(ours, type(theirs)), (type(ours).__mro__, type(theirs))
    if type(theirs) is RuntimeError and num_workers:  # DataLoader could not rebuild the type
        assert type(ours) is sl.WorkerError
    else:
        assert type(ours).__name__ == type(theirs).__name__
    if num_workers:
        assert isinstance(ours, sl.WorkerError)
        assert str(ours).splitlines()[0] == str(theirs).splitlines()[0]
        assert "Traceback (most recent call last)" in str(ours)
        assert "__getitem__" in str(ours)
    else:
        assert type(ours) is type(theirs)
        assert str(ours) == str(theirs)


def test_except_clauses_of_a_dataloader_loop_catch_the_worker_exception() -> None:
    """``except KeyError`` (what the script caught with DataLoader) and ``except sl.WorkerError``
    both catch a worker's KeyError; the exception type is reused across batches."""
    loader = StreamLoader(Failing("KeyError"), batch_size=4, num_workers=2)
    caught = []
    for _ in range(2):
        try:
            list(loader)
        except KeyError as exc:
            caught.append(exc)
    assert len(caught) == 2 and type(caught[0]) is type(caught[1])
    with pytest.raises(sl.WorkerError, match="Caught KeyError in DataLoader worker process 0"):
        list(loader)


def test_exception_from_worker_init_fn_and_from_a_planned_pass_keep_their_type(
    tmp_path: Path,
) -> None:
    """worker_init_fn failures and transform failures in a StreamingDataset's own plan (workers
    build batches without the trainer naming them) arrive as their own type too."""

    def init(worker_id: int) -> None:
        raise ShardUnreadable(f"worker {worker_id} could not mount the bucket")

    with pytest.raises(ShardUnreadable, match="could not mount the bucket"):
        list(
            StreamLoader(
                Failing("KeyError"),
                num_workers=1,
                worker_init_fn=init,
                multiprocessing_context="fork",
            )
        )

    root = tmp_path / "ds"
    with ShardWriter(str(root), shard_size="256B") as w:
        for i in range(N):
            w.write({"i": i})

    def transform(sample: dict[str, Any]) -> dict[str, Any]:
        if sample["i"] == 13:
            raise ShardUnreadable("sample 13")
        return sample

    ds = StreamingDataset(str(root), transform=transform)
    with pytest.raises(ShardUnreadable, match="sample 13") as info:
        list(StreamLoader(ds, batch_size=4, num_workers=2, multiprocessing_context="fork"))
    assert isinstance(info.value, sl.WorkerError)


# -- the IterableDataset length warning -----------------------------------------------------------


class Unsharded(IterableDataset[Any]):
    """The classic bug: every worker yields the whole dataset (no get_worker_info split)."""

    def __len__(self) -> int:
        return 6

    def __iter__(self) -> Iterator[int]:
        return iter(range(6))

    def __repr__(self) -> str:
        return "Unsharded()"


def test_workers_each_yielding_the_whole_iterable_warn_exactly_as_dataloader() -> None:
    """Asking len(loader), then fetching more than it said because every worker yields a full
    copy, gives DataLoader's warnings (same text, same count) with its worker-replica hint."""
    kwargs: dict[str, Any] = {"batch_size": 1, "num_workers": 2, "multiprocessing_context": "fork"}
    results = []
    for make in (DataLoader, StreamLoader):
        loader = make(Unsharded(), **kwargs)
        assert len(loader) == 6
        with pytest.warns(UserWarning) as record:
            batches = [int(b) for b in loader]
        results.append((sorted(batches), [str(w.message) for w in record]))
    (dl_batches, dl_warnings), (sl_batches, sl_warnings) = results
    assert sl_batches == dl_batches
    # With fewer CPUs than workers (a one-core cpuset) both also warn about the worker count,
    # StreamLoader with its ring detail appended: checked apart, as a prefix.
    dl_count, dl_warnings = _split_worker_count(dl_warnings)
    sl_count, sl_warnings = _split_worker_count(sl_warnings)
    assert len(sl_count) == len(dl_count)
    assert all(s.startswith(d) for s, d in zip(sl_count, dl_count, strict=True))
    assert sl_warnings == dl_warnings
    assert len(dl_warnings) == 6 and "replica at each worker" in sl_warnings[0]


def _split_worker_count(messages: list[str]) -> tuple[list[str], list[str]]:
    """(DataLoader's too-many-workers warnings, the rest) of a list of warning texts."""
    count = [m for m in messages if m.startswith("This DataLoader will create")]
    return count, [m for m in messages if m not in count]


def test_iterable_longer_than_len_warns_without_workers() -> None:
    """At num_workers=0 a dataset yielding more than its length warns as DataLoader does."""

    class Lies(Unsharded):
        def __len__(self) -> int:
            return 4

    messages = []
    for make in (DataLoader, StreamLoader):
        loader = make(Lies(), batch_size=None)
        len(loader)
        with pytest.warns(UserWarning) as record:
            list(loader)
        messages.append([str(w.message) for w in record])
    assert messages[0] == messages[1] and len(messages[0]) == 2


# -- start method -----------------------------------------------------------------------------------

START_METHOD_SCRIPT = """
import multiprocessing, os, sys
from torch.utils.data import DataLoader, Dataset
import streamload as sl

class Where(Dataset):
    # How this worker was started: its parent, and the name its main module runs under.
    def __init__(self):
        self.trainer = os.getpid()
    def __len__(self):
        return 2
    def __getitem__(self, i):
        if os.getppid() != self.trainer:
            return "forkserver"
        return "spawn" if sys.modules["__main__"].__name__ == "__mp_main__" else "fork"

if __name__ == "__main__":
    if sys.argv[1] != "none":
        multiprocessing.set_start_method(sys.argv[1])
    for make in (DataLoader, sl.StreamLoader):
        if make.__name__ in sys.argv[2:]:
            print(make.__name__, *set(make(Where(), batch_size=None, num_workers=1)))
"""


def _start_methods(
    tmp_path: Path, global_method: str, env: dict[str, str], loaders: tuple[str, ...]
) -> dict[str, str]:
    script = tmp_path / "start_method.py"
    script.write_text(START_METHOD_SCRIPT)
    out = subprocess.run(
        [sys.executable, str(script), global_method, *loaders],
        capture_output=True,
        text=True,
        timeout=100,
        cwd=tmp_path,
        env={**os.environ, **env},
    )
    assert out.returncode == 0, out.stderr
    return dict(line.split(" ", 1) for line in out.stdout.strip().splitlines())


def test_global_start_method_is_respected_like_dataloader(tmp_path: Path) -> None:
    """multiprocessing.set_start_method("spawn") makes StreamLoader spawn its workers, as
    DataLoader does; without a global choice config auto forks (single-threaded trainer)."""
    both = ("DataLoader", "StreamLoader")
    chosen = _start_methods(tmp_path, "spawn", {}, both)
    assert chosen == {"DataLoader": "spawn", "StreamLoader": "spawn"}
    unchosen = _start_methods(tmp_path, "none", {}, both)
    assert unchosen == {"DataLoader": "fork", "StreamLoader": "fork"}


def test_explicit_start_method_setting_wins_over_the_global_one(tmp_path: Path) -> None:
    """A start_method setting naming a method beats set_start_method (the documented
    precedence: multiprocessing_context > start_method setting > global > auto)."""
    env = {"STREAMLOAD_START_METHOD": "forkserver"}
    assert _start_methods(tmp_path, "spawn", env, ("StreamLoader",)) == {
        "StreamLoader": "forkserver"
    }


# -- in_order=False ---------------------------------------------------------------------------------


class Gated(Dataset[Any]):
    """Sample 0 waits (bounded) until the trainer has received some other batch: in order,
    batch 0 would come first after the wait; out of order, others overtake it."""

    def __init__(self, flag: Path) -> None:
        self.flag = flag

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> Any:
        if i == 0:
            deadline = time.monotonic() + 20
            while not self.flag.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        return torch.tensor([i])


def _gated_run(make: Any, flag: Path, **kwargs: Any) -> list[int]:
    flag.unlink(missing_ok=True)
    order = []
    for batch in make(Gated(flag), batch_size=2, num_workers=2, **kwargs):
        order.append(int(batch[0]))
        flag.touch()
    return order


def test_in_order_false_delivers_ready_batches_first_like_dataloader(tmp_path: Path) -> None:
    """With in_order=False a slow batch is overtaken by ready ones and every batch still
    arrives exactly once, as in DataLoader; in_order=True keeps sampler order."""
    flag = tmp_path / "flag"
    for make in (DataLoader, StreamLoader):
        unordered = _gated_run(make, flag, in_order=False, multiprocessing_context="fork")
        assert unordered[0] != 0, make.__name__
        assert sorted(unordered) == list(range(0, N, 2)), make.__name__
    flag.touch()
    ordered = _gated_run(StreamLoader, flag, in_order=True, multiprocessing_context="fork")
    assert ordered == list(range(0, N, 2))


def test_in_order_false_over_a_streaming_dataset_plan_and_state_dict_refused(
    tmp_path: Path,
) -> None:
    """A StreamingDataset read in its own order with in_order=False: every sample exactly once,
    a slow batch overtaken, and state_dict refused with StateError (no exact position exists)."""
    root = tmp_path / "ds"
    with ShardWriter(str(root), shard_size="256B") as w:
        for i in range(N):
            w.write({"i": i})
    flag = tmp_path / "flag"

    def gate(sample: dict[str, Any]) -> dict[str, Any]:
        if sample["i"] == 0:
            deadline = time.monotonic() + 20
            while not flag.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        return sample

    ds = StreamingDataset(str(root), transform=gate)
    loader = StreamLoader(
        ds, batch_size=2, num_workers=2, in_order=False, multiprocessing_context="fork"
    )
    seen = []
    for batch in loader:
        seen.append(batch["i"].tolist())
        flag.touch()
        with pytest.raises(sl.StateError, match="in_order=False"):
            loader.state_dict()
    assert seen[0] != [0, 1]
    assert sorted(i for b in seen for i in b) == list(range(N))
    # Restoring a state (made in order) and reading out of order is fine: it starts exactly there.
    loader.load_state_dict(StreamLoader(ds, batch_size=2).state_dict())


# -- generic --------------------------------------------------------------------------------------


def test_streamloader_is_generic_like_dataloader() -> None:
    """StreamLoader[T] works in annotations (evaluated at runtime) wherever DataLoader[T] does."""

    def train(loader: StreamLoader[dict[str, torch.Tensor]]) -> None: ...

    def old_train(loader: DataLoader[dict[str, torch.Tensor]]) -> None: ...

    hints = typing.get_type_hints(train, globals(), locals())
    assert typing.get_origin(hints["loader"]) is StreamLoader
    assert typing.get_args(hints["loader"]) == typing.get_args(
        typing.get_type_hints(old_train, globals(), locals())["loader"]
    )
    alias = StreamLoader[int]
    assert isinstance(alias(Failing("KeyError"), batch_size=2), StreamLoader)
    returns = typing.get_type_hints(StreamLoader.__iter__)["return"]
    assert typing.get_args(returns) == typing.get_args(
        typing.Iterator[StreamLoader.__parameters__[0]]
    )
