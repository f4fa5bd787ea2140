"""Resume state: where a pass stands, as a small JSON-able dict valid on any topology.

A state is ``{"version", "fingerprint", "epoch", "position"}``: the fingerprint says which
dataset and shuffle settings it belongs to (`fingerprint`), ``position`` counts the ids of the
epoch's global order consumed by all ranks together (see `streamload.plan.partition`), so the
same state continues the same order on another world size, batch size or worker count.
`check_state` refuses anything else with a `StateError` showing both sides; a state is data
from a file, so every field's type and range is checked (``version`` the integer 1, not ``true``
or ``1.0``; ``epoch`` below ``MAX_EPOCH``; ``position`` within the dataset) and values are
quoted briefly in messages.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from streamload.errors import StateError, quote
from streamload.plan.order import ShuffleSettings

STATE_VERSION = 1
MAX_EPOCH = 2**32 - 1  # far past any real run, and epoch + 1 stays a small int everywhere
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
    version = state.get("version")
    if type(version) is not int or version != STATE_VERSION:  # not True, not 1.0
        raise StateError(
            f"{what}: state version {quote(version)} is not supported"
            f" (this streamload reads version {STATE_VERSION})"
        )
    keys = sorted(map(str, state))
    if set(state) != _STATE_KEYS:
        raise StateError(
            f"{what}: state keys {quote(keys)} differ from the expected {sorted(_STATE_KEYS)}"
        )
    saved = state["fingerprint"]
    if not isinstance(saved, Mapping) or not _same(saved, fp):
        saved = dict(saved) if isinstance(saved, Mapping) else {"?": saved}
        fields = sorted({str(k) for k in saved} | set(fp))
        by_name = {str(k): v for k, v in saved.items()}
        diffs = [
            f"{key}: state has {quote(by_name.get(key, '<missing>'))}, this dataset has"
            f" {quote(fp.get(key, '<missing>'))}"
            for key in fields
            if not _same_value(by_name.get(key, "<missing>"), fp.get(key, "<missing>"))
        ]
        raise StateError(
            f"{what}: the state belongs to another dataset or other shuffle settings; "
            + "; ".join(diffs)
            + f"\nstate fingerprint: {quote(by_name)}"
            + f"\nthis dataset:      {json.dumps(dict(fp), sort_keys=True)}"
        )
    epoch, position = state["epoch"], state["position"]
    if type(epoch) is not int or not 0 <= epoch <= MAX_EPOCH:
        raise StateError(
            f"{what}: state epoch must be an int in [0, {MAX_EPOCH}], got {quote(epoch)}"
        )
    if type(position) is not int or position < 0:
        raise StateError(f"{what}: state position must be an int >= 0, got {quote(position)}")
    if position > fp["num_samples"]:
        raise StateError(
            f"{what}: state position {position} is past the end of the dataset"
            f" ({fp['num_samples']} samples)"
        )
    return epoch, position


def _same_value(saved: object, ours: object) -> bool:
    """Equal and of the same JSON type (a state's ``true`` is not this dataset's ``1``)."""
    return type(saved) is type(ours) and saved == ours


def _same(saved: Mapping[Any, Any], fp: Mapping[str, Any]) -> bool:
    return len(saved) == len(fp) and all(
        key in saved and _same_value(saved[key], value) for key, value in fp.items()
    )
