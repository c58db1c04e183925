"""Transactions are sized by each user's fan-out, so memory stays bounded at any fan-out."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

from aiokafka.structs import ConsumerRecord, TopicPartition

from tests.support import TOKEN_A as TOKEN
from worker.consumer import MAX_EXECUTIONS_PER_TRANSACTION, UNKNOWN_FANOUT, Pipeline, _deal, _Part
from worker.messages import SignalV1
from worker.metrics import Metrics
from worker.settings import Settings

TOPIC = "trading-signals"


def _record(partition: int, offset: int, user: uuid.UUID | None) -> ConsumerRecord[bytes, bytes]:
    if user is None:
        value = b"not json"
    else:
        message = {"user_id": str(user), "token_address": TOKEN, "signal_type": "x",
                   "signal_strength": 3}  # fmt: skip
        value = json.dumps(message).encode()
    return ConsumerRecord(TOPIC, partition, offset, 0, 0, None, value, None, 0, len(value), ())


async def test_chunks_cover_every_record_once_within_the_execution_budget() -> None:
    big, small = uuid.uuid4(), uuid.uuid4()
    pipeline = Pipeline(Settings(), None, None, Metrics())  # type: ignore[arg-type]
    try:
        pipeline._fanout[big] = 1000
        lane: list[_Part] = []
        dead_count = 0
        for partition in (3, 5):
            tp = TopicPartition(TOPIC, partition)
            users = [big if i % 2 else (small if i % 5 else None) for i in range(60)]
            records = [_record(partition, 100 + i, user) for i, user in enumerate(users)]
            items, dead = pipeline._decode(tp, records, datetime.now(UTC))
            dead_count += len(dead)
            assert len(dead) == users.count(None)
            lane.append(_Part(tp, records, items, [pipeline._cost(i) for i in items]))
        chunks = list(pipeline._chunks(lane))
    finally:
        await pipeline.consumer.stop()
    assert len(chunks) > 2
    # Each partition's records contiguous and in order, each once; bad ones ride inside.
    for partition in (3, 5):
        offsets = [r.offset for c in chunks for r in c.records if r.partition == partition]
        assert offsets == list(range(100, 160))
    for chunk in chunks:
        cost = 0
        for item in chunk.items:
            assert isinstance(item.message, SignalV1)
            cost += 1000 if item.message.user_id == big else UNKNOWN_FANOUT
        assert cost <= MAX_EXECUTIONS_PER_TRANSACTION or len(chunk.items) == 1
        assert {i.record.offset for i in chunk.items} <= {r.offset for r in chunk.records}
        # The offset stored for a partition is the one after its last record in the chunk.
        for tp, next_offset in chunk.next_offsets.items():
            last = max(r.offset for r in chunk.records if r.partition == tp.partition)
            assert next_offset == last + 1
        assert {r.partition for r in chunk.records} == {tp.partition for tp in chunk.next_offsets}
    assert dead_count == sum(len(c.records) - len(c.items) for c in chunks)


def test_partitions_are_dealt_whole_into_balanced_lanes() -> None:
    costs = [900, 10, 10, 500, 400, 1, 0, 300]
    parts = [_Part(TopicPartition(TOPIC, p), [], [], [cost]) for p, cost in enumerate(costs)]
    lanes = _deal(parts, 3)
    assert len(lanes) == 3
    dealt = sorted(p.tp.partition for lane in lanes for p in lane)
    assert dealt == list(range(len(costs)))
    loads = sorted(sum(p.cost for p in lane) for lane in lanes)
    assert loads == [521, 700, 900]  # greedy: the costliest partition first to the lightest lane
    for lane in lanes:
        assert [p.tp.partition for p in lane] == sorted(p.tp.partition for p in lane)
    assert len(_deal(parts[:2], 3)) == 2  # never an empty lane
    assert _deal([], 3) == []
