"""Resume states (`streamload.plan.state`): small, JSON-able, refused with both sides shown."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamload.errors import StateError
from streamload.plan.order import ShuffleSettings
from streamload.plan.state import check_state, fingerprint, make_state

FP = fingerprint(100, "abc", ShuffleSettings(True, 1, "block", 4))


def test_state_round_trips_through_json() -> None:
    """A state is plain JSON and loads back to its epoch and position."""
    state = json.loads(json.dumps(make_state(FP, 3, 40)))
    assert check_state(state, FP, "t") == (3, 40)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.update(version=2), "version 2 is not supported"),
        (lambda s: s.pop("position"), "keys"),
        (lambda s: s.update(extra=1), "keys"),
        (lambda s: s["fingerprint"].update(seed=2), "seed: state has 2, this dataset has 1"),
        (lambda s: s["fingerprint"].update(index="zzz"), "index: state has 'zzz'"),
        (lambda s: s["fingerprint"].update(mode="full"), "mode: state has 'full'"),
        (lambda s: s.update(position=101), "past the end"),
        (lambda s: s.update(epoch=-1), "epoch must be"),
        (lambda s: s.update(position="3"), "position must be"),
    ],
)
def test_incompatible_states_raise_state_error_showing_both_sides(
    change: Any, message: str
) -> None:
    """Another dataset, other settings, an unknown version or a malformed state: StateError."""
    state = make_state(FP, 0, 10)
    change(state)
    with pytest.raises(StateError, match=message):
        check_state(state, FP, "t")
    with pytest.raises(StateError, match="expected a state dict"):
        check_state([1], FP, "t")


@settings(max_examples=30)
@given(st.integers(0, 2**40), st.integers(0, 2**40))
def test_state_is_small(epoch: int, position: int) -> None:
    """A state stays a few hundred bytes of JSON whatever the dataset size."""
    assert len(json.dumps(make_state(FP, epoch, position))) < 300


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.update(version=True), "version True is not supported"),
        (lambda s: s.update(version=1.0), "version 1.0 is not supported"),
        (lambda s: s.update(epoch=10**19), r"epoch must be an int in \[0, 4294967295\]"),
        (lambda s: s.update(epoch=2**63), "epoch must be"),
        (lambda s: s.update(epoch=2**32), "epoch must be"),
        (lambda s: s.update(epoch=True), "epoch must be"),
        (lambda s: s.update(epoch=3.0), "epoch must be"),
        (lambda s: s.update(position=2**63), "past the end"),
        (lambda s: s.update(position=False), "position must be"),
        (lambda s: s["fingerprint"].update(seed=True), "seed: state has True, this dataset has 1"),
        (lambda s: s["fingerprint"].update({1: 2}), "differ|another dataset"),
        (lambda s: s.update({1: 2}), "keys"),
    ],
)
def test_state_fields_have_exact_types_and_sane_ranges(change: Any, message: str) -> None:
    """true for 1, 1.0 for 1, epochs past 2**32, positions past the end: StateError, not accepted."""
    state = make_state(FP, 0, 10)
    change(state)
    with pytest.raises(StateError, match=message):
        check_state(state, FP, "t")


def test_state_error_messages_stay_short_for_huge_or_deep_values() -> None:
    """A hostile state's values are quoted briefly (no megabyte message, no RecursionError)."""
    deep: Any = 1
    for _ in range(5000):
        deep = [deep]
    for field in ("version", "epoch", "position"):
        for value in (deep, "x" * 2**20):
            state = make_state(FP, 0, 10)
            state[field] = value
            with pytest.raises(StateError) as info:
                check_state(state, FP, "t")
            assert len(str(info.value)) < 500
    state = make_state(FP, 0, 10)
    state["fingerprint"]["index"] = deep
    with pytest.raises(StateError) as info:
        check_state(state, FP, "t")
    assert len(str(info.value)) < 2000


def test_largest_epoch_is_accepted() -> None:
    """MAX_EPOCH itself is a valid epoch (the bound refuses only nonsense)."""
    from streamload.plan.state import MAX_EPOCH

    assert check_state(make_state(FP, MAX_EPOCH, 0), FP, "t") == (MAX_EPOCH, 0)
