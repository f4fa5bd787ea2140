"""Every message between the trainer and its loader workers, in one place.

Trainer -> worker: one Pipe per worker carries small control messages, the first byte naming
the kind:

- ``R`` start a dispatched pass (the worker builds a fresh fetcher and waits for items);
- ``O`` + JSON `plan_message`: start a planned pass over a StreamingDataset's own order
  (the worker builds steps ``id, id + n, ...`` of this rank's plan with no further messages);
- ``I`` + int64 index list, ``N`` + one int64 index, ``T`` + int64 length: an iterable
  *ticket* of that many samples, ``P`` + pickle: a trainer-made item of any other shape
  (custom samplers: made by the trainer, never read from a dataset);
- ``X`` exit.

Worker -> trainer: records in the worker's ring, in the order items arrived. A DATA record is
one encoded batch (`streamload.transport.codec`); an ERROR record's body is ``S`` (this
worker's share or iterator ended: StopIteration), ``E`` + the traceback text of an exception,
or ``T`` + the worker's cumulative stage-time snapshot as JSON (`is_stats_record`).
"""

from __future__ import annotations

import json
import pickle
from typing import Any

import numpy as np

START_DISPATCHED = b"R"
START_PLANNED = b"O"
INDEX_LIST = b"I"
ONE_INDEX = b"N"
TICKET = b"T"
PICKLED = b"P"
EXIT = b"X"

END_OF_SHARE = b"S"  # ERROR record body: the worker's share (or iterator) ended
EXCEPTION = b"E"  # ERROR record body prefix: a traceback follows
STATS = b"T"  # ERROR record body prefix: a stats snapshot (JSON) follows


def encode_item(item: Any, ticket: bool) -> bytes:
    """The trainer message for one work item: int64 arrays when the item is integers."""
    if ticket:
        return TICKET + np.int64(len(item) if isinstance(item, list) else 1).tobytes()
    if isinstance(item, int) and not isinstance(item, bool):
        return ONE_INDEX + np.int64(item).tobytes()
    if isinstance(item, list) and all(type(i) is int for i in item):
        return INDEX_LIST + np.asarray(item, dtype=np.int64).tobytes()
    return PICKLED + pickle.dumps(item)


def decode_item(message: bytes) -> Any:
    """The work item a trainer message carries (see `encode_item`)."""
    kind, body = message[:1], message[1:]
    if kind == INDEX_LIST:
        return np.frombuffer(body, dtype=np.int64).tolist()
    if kind == ONE_INDEX:
        return int(np.frombuffer(body, dtype=np.int64)[0])
    if kind == TICKET:
        return [None] * int(np.frombuffer(body, dtype=np.int64)[0])
    return pickle.loads(body)  # trainer-made sampler output only, never dataset bytes


def plan_message(params: dict[str, Any]) -> bytes:
    """``O`` + the plan parameters of a planned pass (epoch, start, rank, world_size,
    batch_size, drop_last: see `streamload.loader.passes.PassCursor.worker_message`)."""
    return START_PLANNED + json.dumps(params).encode()


def plan_params(message: bytes) -> dict[str, Any]:
    """The plan parameters of an ``O`` message."""
    params: dict[str, Any] = json.loads(message[1:])
    return params


def is_stats_record(body: bytes | memoryview) -> bool:
    """Whether an ERROR record body is a worker's stats snapshot."""
    return bytes(body[:1]) == STATS


def exception_text(worker_id: int, body: bytes) -> str:
    """The message of the WorkerError an ``E`` record becomes (DataLoader's wording)."""
    text = body[1:].decode("utf-8", "replace")
    return f"Caught an exception in StreamLoader worker process {worker_id}.\nOriginal {text}"
