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
