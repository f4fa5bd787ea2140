"""One resume-conformance check, shared by every test of something that can be checkpointed.

`check_resume` runs the training-loop pattern (``for epoch in range(ds.epoch, E):
ds.set_epoch(epoch); for batch in loader: ...``) once without interruption, then, for every
global step k (0, mid-epoch, an epoch's end, into the next epoch), runs it again, stops after k
batches, saves the state through JSON (as a checkpoint file would), restores it into a fresh
loader and dataset, and finishes. Invariant: the batches before the stop plus the batches after
the restore are exactly the uninterrupted run's, for every k.

`check_plan_resume` states the same at the plan level: a plan started from the position after
step k yields the original plan's steps from k on, for every rank.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

Batch = list[int]
MakeLoader = Callable[[], tuple[Any, Any]]  # () -> (loader, dataset)


def ids_of(batch: Any) -> Batch:
    """The sample ids of a batch: the ``id`` column of a dict batch, else the batch itself."""
    values = batch["id"] if isinstance(batch, dict) else batch
    return [int(i) for i in (values.tolist() if hasattr(values, "tolist") else values)]


def _run(
    make: MakeLoader,
    epochs: int,
    ids: Callable[[Any], Batch],
    state: dict[str, Any] | None = None,
    stop_after: int | None = None,
) -> tuple[list[tuple[int, Batch]], dict[str, Any] | None]:
    loader, ds = make()
    if state is not None:
        loader.load_state_dict(state)
    seen: list[tuple[int, Batch]] = []
    for epoch in range(ds.epoch, epochs):
        ds.set_epoch(epoch)
        iterator = iter(loader)
        for batch in iterator:
            seen.append((epoch, ids(batch)))
            if stop_after is not None and len(seen) == stop_after:
                saved = json.loads(json.dumps(loader.state_dict()))
                if hasattr(iterator, "shutdown"):
                    iterator.shutdown()
                return seen, saved
    return seen, None


def check_resume(
    make: MakeLoader, epochs: int = 2, ids: Callable[[Any], Batch] = ids_of
) -> list[tuple[int, Batch]]:
    """Assert exact resume after every step of ``epochs`` epochs (see the module docstring).

    Args:
        make: builds a fresh ``(loader, dataset)``; the loader has ``state_dict`` /
            ``load_state_dict``, the dataset ``epoch`` and ``set_epoch``.
        epochs: epochs the loop runs.
        ids: a batch's sample ids.

    Returns:
        The uninterrupted run as ``(epoch, ids)`` per batch.
    """
    reference, _ = _run(make, epochs, ids)
    assert reference, "the uninterrupted run yielded no batch"
    for k in range(1, len(reference) + 1):
        before, state = _run(make, epochs, ids, stop_after=k)
        assert before == reference[:k]
        assert state is not None
        after, _ = _run(make, epochs, ids, state=state)
        assert before + after == reference, f"restored after step {k} of {len(reference)}"
    # Restoring the state of a loader that has not started is the uninterrupted run.
    loader, _ds = make()
    fresh, _ = _run(make, epochs, ids, state=json.loads(json.dumps(loader.state_dict())))
    assert fresh == reference
    return reference


def check_plan_resume(make_plan: Callable[[int], Any], world_size: int) -> None:
    """Assert that a plan restarted at the position after step k continues the original plan.

    Args:
        make_plan: start position -> a plan (``num_steps``, ``position_after(k)``,
            ``batch(rank, step)``).
        world_size: ranks of the plan.
    """
    whole = make_plan(0)
    for k in range(whole.num_steps + 1):
        resumed = make_plan(whole.position_after(k))
        assert resumed.num_steps == whole.num_steps - k
        for step in range(resumed.num_steps):
            for rank in range(world_size):
                assert resumed.batch(rank, step).tolist() == whole.batch(rank, k + step).tolist()
