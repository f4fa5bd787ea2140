"""Trainer <-> worker messages (`streamload.loader.protocol`): what is sent is what arrives."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from streamload.loader import protocol
from streamload.loader.protocol import decode_item, encode_item


@pytest.mark.parametrize("item", [[3, 1, 4], 7, [], ["a", 2], (1, 2)])
def test_control_messages_round_trip_work_items(item: Any) -> None:
    """Every sampler item a worker receives equals what the trainer sent."""
    assert decode_item(encode_item(item, ticket=False)) == item


def test_integer_index_lists_travel_as_int64_not_pickle() -> None:
    """Index lists of ints are raw int64 arrays (no pickle on the trainer -> worker channel)."""
    message = encode_item([5, 6, 7], ticket=False)
    assert message[:1] == b"I" and np.frombuffer(message[1:], np.int64).tolist() == [5, 6, 7]


def test_iterable_ticket_keeps_its_length() -> None:
    """A DataLoader ticket ([None] * batch_size) arrives with its length."""
    assert decode_item(encode_item([None] * 5, ticket=True)) == [None] * 5


def test_plan_parameters_round_trip_and_every_kind_is_one_distinct_byte() -> None:
    """A planned pass's parameters arrive intact; the trainer's message kinds never collide."""
    params = {
        "epoch": 3,
        "start": 40,
        "rank": 1,
        "world_size": 4,
        "batch_size": 8,
        "drop_last": True,
    }
    message = protocol.plan_message(params)
    assert message[:1] == protocol.START_PLANNED and protocol.plan_params(message) == params
    kinds = [
        protocol.START_DISPATCHED,
        protocol.START_PLANNED,
        protocol.INDEX_LIST,
        protocol.ONE_INDEX,
        protocol.TICKET,
        protocol.PICKLED,
        protocol.EXIT,
    ]
    assert all(len(k) == 1 for k in kinds) and len(set(kinds)) == len(kinds)
    assert json.loads(message[1:]) == params


def test_stats_records_are_told_apart_from_errors() -> None:
    """A stats snapshot record is recognised; an exception or end-of-share record is not."""
    assert protocol.is_stats_record(protocol.STATS + b"{}")
    assert not protocol.is_stats_record(protocol.EXCEPTION + b"Traceback")
    assert not protocol.is_stats_record(protocol.END_OF_SHARE)
    text = protocol.exception_text(1, protocol.EXCEPTION + b"Traceback: KeyError")
    assert text.startswith("Caught an exception in StreamLoader worker process 1.")
    assert text.endswith("Original Traceback: KeyError")
