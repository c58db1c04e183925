"""From a fetch to transactions (`worker.pipeline.batching`): decoding, costs, lanes and chunks."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

from aiokafka.structs import ConsumerRecord, TopicPartition

from tests.helpers.books import TOKEN_A as TOKEN
from worker.messages import SignalV1
from worker.pipeline.batching import (
    MAX_EXECUTIONS_PER_TRANSACTION,
    UNKNOWN_FANOUT,
    Fanouts,
    Part,
    above,
    chunks,
    deal,
    decode,
)

TOPIC = "trading-signals"
NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)


def _record(partition: int, offset: int, user: uuid.UUID | None) -> ConsumerRecord[bytes, bytes]:
    if user is None:
        value = b"not json"
    else:
        message = {"user_id": str(user), "token_address": TOKEN, "signal_type": "x",
                   "signal_strength": 3}  # fmt: skip
        value = json.dumps(message).encode()
    return ConsumerRecord(TOPIC, partition, offset, 0, 0, None, value, None, 0, len(value), ())


def test_chunks_cover_every_record_once_within_the_execution_budget() -> None:
    big, small = uuid.uuid4(), uuid.uuid4()
    fanouts = Fanouts()
    fanouts[big] = 1000
    lane: list[Part] = []
    dead_count = 0
    for partition in (3, 5):
        tp = TopicPartition(TOPIC, partition)
        users = [big if i % 2 else (small if i % 5 else None) for i in range(60)]
        records = [_record(partition, 100 + i, user) for i, user in enumerate(users)]
        items, dead = decode(records, kind="signals", now=NOW, max_ahead=timedelta(seconds=60))
        dead_count += len(dead)
        assert len(dead) == users.count(None)
        assert {d.kind for d in dead} == {"invalid"}
        assert fanouts.unseen(items) == {small}
        lane.append(Part(tp, records, items, [fanouts.cost(i) for i in items], [NOW] * len(items)))
    batches = list(chunks(lane))
    assert len(batches) > 2
    # Each partition's records contiguous and in order, each once; bad ones ride inside.
    for partition in (3, 5):
        offsets = [r.offset for c in batches for r in c.records if r.partition == partition]
        assert offsets == list(range(100, 160))
    for chunk in batches:
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
    assert dead_count == sum(len(c.records) - len(c.items) for c in batches)


def test_a_record_costlier_than_the_budget_goes_alone() -> None:
    user = uuid.uuid4()
    fanouts = Fanouts()
    fanouts[user] = 7
    records = [_record(0, i, user) for i in range(5)]
    items, _ = decode(records, kind="signals", now=NOW, max_ahead=timedelta(seconds=60))
    costs = [fanouts.cost(i) for i in items]
    part = Part(TopicPartition(TOPIC, 0), records, items, costs, [NOW] * len(items))
    assert [len(c.records) for c in chunks([part], budget=14)] == [2, 2, 1]
    assert [len(c.records) for c in chunks([part], budget=3)] == [1, 1, 1, 1, 1]


def test_ticks_and_invalid_records_cost_one_and_unknown_users_the_default() -> None:
    fanouts = Fanouts()
    assert fanouts.cost(None) == 1
    records = [_record(0, 0, uuid.uuid4())]
    [item], _ = decode(records, kind="signals", now=NOW, max_ahead=timedelta(seconds=60))
    assert fanouts.cost(item) == UNKNOWN_FANOUT


def test_ticks_from_too_far_ahead_are_dead_letters() -> None:
    tick = json.dumps({"token_address": TOKEN, "price_usd": "1",
                       "ts": (NOW + timedelta(minutes=5)).isoformat()}).encode()  # fmt: skip
    record = ConsumerRecord("prices", 0, 9, int(NOW.timestamp() * 1000), 0, None, tick, None, 0,
                            len(tick), ())  # fmt: skip
    items, dead = decode([record], kind="ticks", now=NOW, max_ahead=timedelta(seconds=60))
    assert items == [None]
    assert [d.kind for d in dead] == ["invalid"]
    assert "more than 60s ahead" in dead[0].reason


def test_records_below_the_floor_are_dropped() -> None:
    records = [_record(0, i, None) for i in range(10, 15)]
    assert above(records, 10) is records
    assert [r.offset for r in above(records, 12)] == [12, 13, 14]
    assert above(records, 20) == []


def test_partitions_are_dealt_whole_into_balanced_lanes() -> None:
    costs = [900, 10, 10, 500, 400, 1, 0, 300]
    parts = [Part(TopicPartition(TOPIC, p), [], [], [cost]) for p, cost in enumerate(costs)]
    lanes = deal(parts, 3)
    assert len(lanes) == 3
    dealt = sorted(p.tp.partition for lane in lanes for p in lane)
    assert dealt == list(range(len(costs)))
    loads = sorted(sum(p.cost for p in lane) for lane in lanes)
    assert loads == [521, 700, 900]  # greedy: the costliest partition first to the lightest lane
    for lane in lanes:
        assert [p.tp.partition for p in lane] == sorted(p.tp.partition for p in lane)
    assert len(deal(parts[:2], 3)) == 2  # never an empty lane
    assert deal([], 3) == []
