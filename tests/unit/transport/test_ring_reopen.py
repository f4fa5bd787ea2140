"""Ring.reopen: a consumer takes a new producer after the previous one closed or died.

A loader without persistent_workers starts new workers every epoch; reopening lets it keep its
rings (creating one zeroes and maps all of it) while nothing from the old producer can leak
into the new stream and no live producer can be cut off.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import numpy as np
import pytest
import torch

import streamload as sl
from streamload.transport.ring import Ring, RingUsageError

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def consumer() -> Iterator[Ring]:
    ring = Ring.create(1 << 16)
    yield ring
    ring.close(timeout=0)


def test_reopen_refuses_while_the_producer_is_alive_and_open(consumer: Ring) -> None:
    """A producer that may still publish is never cut off."""
    producer = Ring.attach(consumer.handle(), "producer")
    with pytest.raises(RingUsageError, match="producer closed or dead"):
        consumer.reopen()
    producer.close()


def test_reopen_refuses_while_a_record_is_held(consumer: Ring) -> None:
    """Memory a caller still views (zero-copy) is never handed to a new producer."""
    producer = Ring.attach(consumer.handle(), "producer")
    producer.put(b"held")
    producer.close()
    record = consumer.get(timeout=5)
    with pytest.raises(RingUsageError, match="every record released"):
        consumer.reopen()
    record.release()
    consumer.reopen()


def test_reopen_discards_unread_records_and_serves_the_next_producer(consumer: Ring) -> None:
    """Records the old producer committed but nobody read never reach the new stream."""
    old = Ring.attach(consumer.handle(), "producer")
    for k in range(5):
        old.put(b"old %d" % k)
    old.close()
    consumer.get(timeout=5).release()
    consumer.reopen()
    new = Ring.attach(consumer.handle(), "producer")
    new.put(b"new")
    record = consumer.get(timeout=5)
    assert bytes(record) == b"new"
    record.release()
    new.close()


def test_reopen_after_the_producer_was_killed() -> None:
    """A SIGKILLed producer process counts as gone: the ring can be reused."""
    consumer = Ring.create(1 << 16)
    handle = consumer.handle()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        producer = Ring.attach(handle, "producer")
        producer.put(b"from the child")
        os.kill(os.getpid(), signal.SIGKILL)
    consumer.set_producer_pid(pid)
    os.waitpid(pid, 0)
    consumer.reopen()
    producer = Ring.attach(consumer.handle(), "producer")
    producer.put(b"after")
    record = consumer.get(timeout=5)
    assert bytes(record) == b"after"
    record.release()
    producer.close()
    consumer.close(timeout=0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> sl.StreamingDataset:
    root = tmp_path_factory.mktemp("reuse") / "ds"
    with sl.ShardWriter(str(root), shard_size=20_000) as w:
        for i in range(600):
            w.write({"id": i, "x": np.full(16, i, dtype=np.int32)})
    return sl.StreamingDataset(str(root))


def _no_init(worker_id: int) -> None:
    pass


def test_non_persistent_passes_reuse_their_rings(dataset: sl.StreamingDataset) -> None:
    """Each epoch starts new workers on the previous epoch's rings, with correct batches (a
    worker_init_fn: user code in the workers, so each pass starts fresh ones)."""
    loader = sl.StreamLoader(
        dataset, batch_size=50, num_workers=2, ring_size="1MiB", worker_init_fn=_no_init
    )
    first = [b["id"].tolist() for b in loader]
    rings = list(loader._spare_rings)
    assert len(rings) == 2
    second = [b["id"].tolist() for b in loader]
    assert second == first == [list(range(k, k + 50)) for k in range(0, 600, 50)]
    assert all(any(r is s for s in loader._spare_rings) for r in rings)


def test_a_held_zero_copy_batch_keeps_its_ring_out_of_reuse(dataset: sl.StreamingDataset) -> None:
    """A zero-copy tensor kept past the epoch still reads its own data; the next pass gets a new ring."""
    loader = sl.StreamLoader(
        dataset,
        batch_size=50,
        num_workers=2,
        ring_size="1MiB",
        zero_copy=True,
        worker_init_fn=_no_init,
    )
    kept: list[torch.Tensor] = []
    for batch in loader:
        kept.append(batch["x"])
    assert len(loader._spare_rings) < 2  # the rings holding the last batches were not reusable
    again = [b["id"].tolist() for b in loader]
    assert again == [list(range(k, k + 50)) for k in range(0, 600, 50)]
    for k, tensor in enumerate(kept):
        assert (tensor[:, 0] == torch.arange(k * 50, k * 50 + 50)).all()
