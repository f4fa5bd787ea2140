"""Resume state: where a pass stands, as a small JSON-able dict valid on any topology.

A state is ``{"version", "fingerprint", "epoch", "position"}``: the fingerprint says which
dataset and shuffle settings it belongs to (`fingerprint`), ``position`` counts the ids of the
epoch's global order consumed by all ranks together (see `streamload.plan.partition`), so the
same state continues the same order on another world size, batch size or worker count.
`check_state` refuses anything else with a `StateError` showing both sides.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from streamload.errors import StateError
from streamload.plan.order import ShuffleSettings

STATE_VERSION = 1
_STATE_KEYS = frozenset(("version", "fingerprint", "epoch", "position"))


def fingerprint(num_samples: int, index_digest: str, settings: ShuffleSettings) -> dict[str, Any]:
    """What a resume state must agree on: the dataset's identity and its shuffle settings."""
    return {"num_samples": num_samples, "index": index_digest, **asdict(settings)}


def make_state(fp: Mapping[str, Any], epoch: int, position: int) -> dict[str, Any]:
    """A JSON-serialisable resume state (plain ints and strings)."""
    return {"version": STATE_VERSION, "fingerprint": dict(fp), "epoch": epoch, "position": position}


def check_state(state: Any, fp: Mapping[str, Any], what: str) -> tuple[int, int]:
    """Validate a resume state against this dataset's fingerprint.

    Args:
        state: what ``make_state`` produced (possibly through JSON or torch.save).
        fp: this dataset's ``fingerprint``.
        what: the object loading it, for messages (e.g. ``"StreamLoader.load_state_dict"``).

    Returns:
        ``(epoch, position)``.

    Raises:
        StateError: not a state, unknown version, missing/extra keys, a fingerprint that differs
            (each differing field with both values), or a bad epoch/position.
    """
    if not isinstance(state, Mapping):
        raise StateError(f"{what}: expected a state dict, got {type(state).__name__}")
    if state.get("version") != STATE_VERSION:
        raise StateError(
            f"{what}: state version {state.get('version')!r} is not supported"
            f" (this streamload reads version {STATE_VERSION})"
        )
    keys = set(state)
    if keys != _STATE_KEYS:
        raise StateError(
            f"{what}: state keys {sorted(keys)} differ from the expected {sorted(_STATE_KEYS)}"
        )
    saved = state["fingerprint"]
    if not isinstance(saved, Mapping) or dict(saved) != dict(fp):
        saved = dict(saved) if isinstance(saved, Mapping) else {"?": saved}
        diffs = [
            f"{key}: state has {saved.get(key, '<missing>')!r}, this dataset has"
            f" {fp.get(key, '<missing>')!r}"
            for key in sorted(set(saved) | set(fp))
            if saved.get(key, "<missing>") != fp.get(key, "<missing>")
        ]
        raise StateError(
            f"{what}: the state belongs to another dataset or other shuffle settings; "
            + "; ".join(diffs)
            + f"\nstate fingerprint: {json.dumps(saved, sort_keys=True, default=str)}"
            + f"\nthis dataset:      {json.dumps(dict(fp), sort_keys=True)}"
        )
    epoch, position = state["epoch"], state["position"]
    for name, value in (("epoch", epoch), ("position", position)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise StateError(f"{what}: state {name} must be an int >= 0, got {value!r}")
    if position > fp["num_samples"]:
        raise StateError(
            f"{what}: state position {position} is past the end of the dataset"
            f" ({fp['num_samples']} samples)"
        )
    return epoch, position
