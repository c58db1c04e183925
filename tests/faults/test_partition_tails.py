"""Scenario 13 (issue 20, item 2): a price partition whose tail is not a data record.

Before: a price partition was *caught up* when the last tick's offset + 1 reached the high
watermark. A tail that is no tick never got there, and every signal waited the full 10 s the
worker then held signals at most, until an ordinary tick came (today the order of
`worker.pipeline.timeline` has no such cut: such a partition would hold every signal, with
`order_waits_for_partitions` logged every 10 s, and this test would time out):
- a tick sent by a transactional producer (its commit marker is the tail);
- a transaction aborted at the tail (its tick is skipped, then its abort marker): a control
  record as the tail, like the commit marker, with nothing returned at all;
- records deleted with delete-records before they were consumed (a stored offset below the
  log start), where `offsets show` also kept a lag that nothing could read.
Now the consumer's fetch position is compared with the last stable offset, and `offsets
show` counts the lag from the log start and names the records removed before they were
processed. (Its lag still counts offsets, as Kafka's own tools do: a transaction's marker
after the last stored offset shows as a lag of 1.)

Compaction is not among them: the broker compacts only closed segments, on its own
schedule, so no test can make it happen on cue; its holes are offsets no record has, which
the aborted transaction covers (its records take offsets the worker never sees).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from aiokafka.structs import TopicPartition

from tests.helpers.books import make_book, mint
from tests.helpers.cli import run_cli
from tests.helpers.kafka import Topics, send_all
from tests.helpers.ledger import EXECUTIONS, Report, assert_exactly_once, measure, seeded
from tests.helpers.services import Services
from tests.helpers.workers import (
    WorkerProcess,
    assert_ran_through,
    env_for,
    log_events,
    make_settings,
    wait_for_count,
)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]

USERS, AGENTS, PER_USER = 6, 4, 1  # one signal per user: a second would be skipped (open position)
TAIL = 1  # the price partition whose tail is the case's; the others stay empty
DELETED_STORED = 1  # deleted records: the group's stored offset, below the new log start
DELETED_TICKS = 3


def tick(token: str, price: str) -> bytes:
    return orjson.dumps(
        {"token_address": token, "price_usd": price, "ts": datetime.now(UTC).isoformat()}
    )


async def transactional_tick(bootstrap: str, topic: str, token: str, *, commit: bool) -> None:
    """One tick in a transaction on partition `TAIL`, committed or aborted."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        transactional_id=f"tails-{uuid.uuid4().hex[:8]}",
        enable_idempotence=True,
    )
    await producer.start()
    try:
        await producer.begin_transaction()
        await producer.send_and_wait(topic, tick(token, "2"), key=token.encode(), partition=TAIL)
        if commit:
            await producer.commit_transaction()
        else:
            await producer.abort_transaction()
    finally:
        await producer.stop()


async def deleted_ticks(
    bootstrap: str, topics: Topics, token: str, db_conn: asyncpg.Connection
) -> None:
    """`DELETED_TICKS` ticks on partition `TAIL`, the group's stored offset after the first
    of them, then every one of them deleted: the stored offset is below the log start."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for _ in range(DELETED_TICKS):
            await producer.send_and_wait(
                topics.prices, tick(token, "2"), key=token.encode(), partition=TAIL
            )
    finally:
        await producer.stop()
    await db_conn.execute(
        "INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset) "
        "VALUES ($1, $2, $3, $4)",
        topics.group,
        topics.prices,
        TAIL,
        DELETED_STORED,
    )
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        low = await admin.delete_records(
            {TopicPartition(topics.prices, TAIL): RecordsToDelete(DELETED_TICKS)}
        )
    finally:
        await admin.close()
    assert low == {TopicPartition(topics.prices, TAIL): DELETED_TICKS}, low


@pytest.mark.parametrize("case", ["committed transaction", "aborted transaction", "deleted"])
async def test_signals_are_not_held_by_a_price_partition_whose_tail_is_no_tick(
    case: str,
    services: Services,
    db_url: str,
    topics: Topics,
    db_conn: asyncpg.Connection,
    report: Report,
) -> None:
    seed, rng = seeded(f"partition-tails-{case}")
    book = await make_book(db_conn, USERS, AGENTS)
    token = mint(rng)
    bootstrap = services.kafka_bootstrap
    if case == "deleted":
        await deleted_ticks(bootstrap, topics, token, db_conn)
    else:
        await transactional_tick(
            bootstrap, topics.prices, token, commit=case == "committed transaction"
        )
    signals: list[dict[str, Any]] = book.signals(PER_USER, [token])
    for s in signals:
        if case == "committed transaction":
            s.pop("price_usd", None)  # the token's price comes from the transactional tick
        else:
            s["price_usd"] = "0.5"

    settings = make_settings(services, db_url, topics)
    worker = WorkerProcess(env_for(settings)).start()
    try:
        await worker.wait_started()
        await send_all(bootstrap, topics.signals, signals)
        await wait_for_count(db_url, EXECUTIONS, len(signals) * AGENTS, timeout_s=60)
        held_long = log_events(worker, "order_waits_for_partitions")
        alive = worker.is_alive()
    finally:
        code = worker.terminate()
    shown = await run_cli(env_for(settings), "offsets", "show", "--topic", topics.prices)

    ledger = await measure(db_conn, book.expected)
    statuses = {
        r["status"]: r["n"]
        for r in await db_conn.fetch(
            "SELECT status, count(*) AS n FROM signal_executions GROUP BY status"
        )
    }
    fills = [
        r[0]
        for r in await db_conn.fetch(
            "SELECT DISTINCT output_price FROM agent_transactions WHERE output_mint = $1", token
        )
    ]
    tail_row = next(
        line.split()
        for line in shown.stdout.splitlines()
        if line.split()[:2] == [topics.prices, str(TAIL)]
    )
    report(
        f"13 partition tails ({case})",
        records=f"1 price partition's tail: {case}, then {len(signals)} signals x {AGENTS} agents",
        faults=f"{len(held_long)} waits over 10 s, executions {statuses}, fill prices "
        f"{[str(f) for f in fills]}, offsets show {' '.join(tail_row[2:])}",
        **ledger.figures,
        exit=code,
        seed=seed,
    )
    assert_ran_through(worker, code, alive=alive)
    # No signal waited for a partition that had nothing left to read.
    assert held_long == [], held_long
    assert statuses == {"success": len(signals) * AGENTS}, statuses
    if case == "committed transaction":
        # 2 USD / 100 USD per SOL: the transactional tick was applied before the signals.
        assert fills == [Decimal("0.02")]
    else:
        assert fills == [Decimal("0.005")]  # the signals' own price: no tick was applied
    assert shown.code == 0, shown
    if case == "deleted":
        # stored, committed, end, lag of the tail partition: nothing is left to read, and
        # the records that were never processed are named.
        assert tail_row[-1] == "0", shown.stdout
        removed = DELETED_TICKS - DELETED_STORED
        assert (
            f"{topics.prices}:{TAIL}: {removed} record(s) at offsets {DELETED_STORED} to "
            f"{DELETED_TICKS - 1} were removed from the log before they were processed"
        ) in shown.stdout, shown.stdout
    assert_exactly_once(ledger)
