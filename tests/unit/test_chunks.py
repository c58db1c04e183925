"""Transactions are sized by each user's fan-out, so memory stays bounded at any fan-out."""

from __future__ import annotations

import json
import uuid

from aiokafka.structs import ConsumerRecord, TopicPartition

from worker.consumer import MAX_EXECUTIONS_PER_TRANSACTION, UNKNOWN_FANOUT, Pipeline
from worker.messages import SignalV1
from worker.metrics import Metrics
from worker.settings import Settings

TOKEN = "7GCihgDB8fe6KNjn2MYtkzZcRjQy3t9GHdC8uHYmW2hr"
TP = TopicPartition("trading-signals", 0)


def _record(offset: int, user: uuid.UUID | None) -> ConsumerRecord[bytes, bytes]:
    if user is None:
        value = b"not json"
    else:
        message = {"user_id": str(user), "token_address": TOKEN, "signal_type": "x",
                   "signal_strength": 3}  # fmt: skip
        value = json.dumps(message).encode()
    return ConsumerRecord(TP.topic, 0, offset, 0, 0, None, value, None, 0, len(value), ())


async def test_chunks_cover_every_record_once_within_the_execution_budget() -> None:
    big, small = uuid.uuid4(), uuid.uuid4()
    pipeline = Pipeline(Settings(), None, None, Metrics())  # type: ignore[arg-type]
    try:
        pipeline._fanout[big] = 1000
        users = [big if i % 2 else (small if i % 5 else None) for i in range(60)]
        records = [_record(i, user) for i, user in enumerate(users)]
        items, dead = pipeline._decode(TP, records)
        chunks = list(pipeline._chunks(records, items))
    finally:
        await pipeline.consumer.stop()
    # Contiguous and in order, each record once; bad records ride inside their chunk.
    assert [r.offset for chunk, _ in chunks for r in chunk] == list(range(60))
    assert len(dead) == users.count(None)
    assert len(chunks) > 1
    for chunk, chunk_items in chunks:
        cost = 0
        for item in chunk_items:
            assert isinstance(item.message, SignalV1)
            cost += 1000 if item.message.user_id == big else UNKNOWN_FANOUT
        assert cost <= MAX_EXECUTIONS_PER_TRANSACTION or len(chunk_items) == 1
        assert {i.record.offset for i in chunk_items} <= {r.offset for r in chunk}
