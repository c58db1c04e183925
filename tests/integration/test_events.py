"""Issue 24: every committed effect becomes one event in the outbox, in its transaction, and
the relay publishes each to EVENTS_TOPIC once, keyed by user, in commit order per user."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from tests.e2e.test_commands import USER, _stream
from tests.helpers.books import mint
from tests.helpers.db import connected
from tests.helpers.kafka import Topics, read_all
from tests.helpers.services import Services
from tests.helpers.streams import Record, publish_stream, record_counts
from tests.helpers.workers import WorkerProcess, wait_for, worker_env
from worker.messages import EVENT_ADAPTER

pytestmark = pytest.mark.integration

EFFECTS = """
SELECT
  (SELECT count(*) FROM agent_transactions WHERE transaction_type = 'SWAP'
      AND (input_mint = 'So11111111111111111111111111111111111111112' OR is_take_profit))
      AS trades,
  (SELECT count(*) FROM agent_historical_swaps) AS exits,
  (SELECT count(DISTINCT signal_id) FROM signal_executions WHERE status <> 'success')
      AS not_traded,
  (SELECT count(*) FROM command_results) AS commands
"""


async def _published(url: str) -> bool:
    async with connected(url) as conn:
        return bool(
            await conn.fetchval(
                "SELECT count(*) > 0 AND count(*) FILTER (WHERE published_at IS NULL) = 0 "
                "FROM event_outbox"
            )
        )


async def test_each_effect_is_one_event_published_once_in_order_per_user(
    services: Services, db_url: str, topics: Topics
) -> None:
    records: list[Record] = _stream([mint(random.Random(i)) for i in range(3)])
    await publish_stream(services.kafka_bootstrap, topics.signals, topics.prices, records)
    counts = record_counts(records)
    env = worker_env(services, db_url, topics, events_retention_hours=1)  # rows kept
    worker = WorkerProcess(env).start()
    try:
        await worker.wait_started()

        async def done() -> bool:
            async with connected(db_url) as conn:
                n = await conn.fetchval(
                    "SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets "
                    "WHERE consumer_group = $1",
                    topics.group,
                )
            return int(n) >= sum(counts.values()) and await _published(db_url)

        await wait_for(done, timeout_s=60, what="every record applied and every event sent")
    finally:
        assert worker.terminate() == 0, worker.tail()
    async with connected(db_url) as conn:
        row = await conn.fetchrow(EFFECTS)
        assert row is not None
        effects = dict(row)
        outbox = [dict(r) for r in await conn.fetch(
            "SELECT id, event_id, user_id, type, payload FROM event_outbox ORDER BY id"
        )]  # fmt: skip
    kinds = Counter(r["type"] for r in outbox)
    # One event per effect: trades (buys, DCA buys, take-profit sales), exits, executions
    # that did not trade, commands, and the one dead-lettered command.
    assert kinds["buy"] + kinds["dca_buy"] + kinds["take_profit_sale"] == effects["trades"]
    assert kinds["position_closed"] == effects["exits"] == 1
    assert kinds["executions_not_traded"] == effects["not_traded"] >= 2
    assert kinds["command_result"] == effects["commands"] == 9
    assert kinds["dead_letter"] == 1
    events = await read_all(services.kafka_bootstrap, f"{topics.signals}.events")
    sent = [(r.key, json.loads(r.value)) for r in events]
    assert len(sent) == len(outbox)
    assert sorted(e["event_id"] for _, e in sent) == sorted(str(r["event_id"]) for r in outbox)
    # Keyed by user; one user's events on one partition, in outbox (commit) order.
    assert {key for key, _ in sent} == {str(USER).encode()}
    by_id = {str(r["event_id"]): r["id"] for r in outbox}
    order = [by_id[e["event_id"]] for _, e in sent]  # as the partition holds them
    partitions = {r.partition for r in events}
    assert len(partitions) == 1
    assert order == sorted(order)
    closed = next(e for _, e in sent if e["type"] == "position_closed")
    assert closed["close_reason"] == "manual" and closed["user_id"] == str(USER)
    skipped = [x for _, e in sent if e["type"] == "executions_not_traded" for x in e["executions"]]
    assert any("minScore 5" in (x["reason"] or "") for x in skipped)
    # Every event is what its published schema says (docs/schemas/event.v1.json).
    for _, event in sent:
        EVENT_ADAPTER.validate_python(event)


async def test_events_off_writes_no_outbox_rows(
    services: Services, db_url: str, topics: Topics
) -> None:
    records = _stream([mint(random.Random(i)) for i in range(3)])[:9]
    await publish_stream(services.kafka_bootstrap, topics.signals, topics.prices, records)
    worker = WorkerProcess(worker_env(services, db_url, topics, events_enabled=False)).start()
    try:
        await worker.wait_started()

        async def applied() -> bool:
            async with connected(db_url) as conn:
                return bool(await conn.fetchval("SELECT count(*) >= 2 FROM signal_executions"))

        await wait_for(applied, timeout_s=60, what="the signal traded")
    finally:
        assert worker.terminate() == 0, worker.tail()
    async with connected(db_url) as conn:
        assert await conn.fetchval("SELECT count(*) FROM event_outbox") == 0
