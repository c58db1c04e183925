"""Scenario 14: the signals topic deleted and recreated between runs (issue 20, item 3).

Before: the offsets stored in PostgreSQL lay past the new log's end, the consumer fell back
to its start and dropped every new record below the stored offset as "already applied",
with only a warning. Now the worker does not consume those partitions (`/readyz` and one
error line per partition say why and name the command); after the operator's
`offsets reset --to-earliest` every new signal is processed, none twice.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

import asyncpg
import pytest
from aiokafka.errors import TopicAlreadyExistsError

from tests.helpers.books import make_book, mint
from tests.helpers.cli import run_cli
from tests.helpers.db import count, stored_offsets
from tests.helpers.http import http_get
from tests.helpers.kafka import Topics, create_topics, delete_topics, send_all
from tests.helpers.ledger import EXECUTIONS, Report, assert_exactly_once, measure, seeded
from tests.helpers.services import Services
from tests.helpers.workers import (
    WorkerProcess,
    env_for,
    log_events,
    make_settings,
    wait_for,
    wait_for_count,
)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240)]

USERS, AGENTS = 12, 5
BEFORE, AFTER = 10, 3  # signals per user before the topic is recreated, and after


async def recreate(bootstrap: str, topic: str) -> None:
    """Delete `topic` and create it again (3 partitions), once the deletion is done."""
    await delete_topics(bootstrap, [topic])
    deadline = asyncio.get_running_loop().time() + 60
    while True:  # deletion is asynchronous in the broker: create fails until it is done
        try:
            await create_topics(bootstrap, [topic], 3)
        except TopicAlreadyExistsError:  # while the deletion runs
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.5)
        else:
            return


async def test_a_recreated_signals_topic_loses_nothing_after_the_reset(
    services: Services, db_url: str, topics: Topics, db_conn: asyncpg.Connection, report: Report
) -> None:
    seed, rng = seeded("recreated-topic")
    book = await make_book(db_conn, USERS, AGENTS, deposit_sol=Decimal(100))
    tokens = [mint(rng) for _ in range(40)]
    settings = make_settings(services, db_url, topics)
    env = env_for(settings)

    first = book.signals(BEFORE, tokens)
    await send_all(services.kafka_bootstrap, topics.signals, first)
    worker = WorkerProcess(env).start()
    try:
        await worker.wait_started()
        await wait_for_count(db_url, EXECUTIONS, len(first) * AGENTS, timeout_s=60)

        async def all_stored() -> bool:
            offsets = await stored_offsets(db_url, topics.group, topics.signals)
            return sum(offsets.values()) == len(first)

        await wait_for(all_stored, what="every first-run offset to be stored")
    finally:
        first_exit = worker.terminate()
    before = await stored_offsets(db_url, topics.group, topics.signals)

    # Between runs: the topic is recreated, and fewer new signals than the stored offsets.
    await recreate(services.kafka_bootstrap, topics.signals)
    second = book.signals(AFTER, tokens, start=BEFORE)
    await send_all(services.kafka_bootstrap, topics.signals, second)

    worker = WorkerProcess(env).start()
    try:
        await worker.wait_started()
        assert worker.http_port is not None
        port = worker.http_port

        async def not_ready() -> bool:
            status, body = await http_get(port, "/readyz")
            return status == 503 and "not consumed" in body

        await wait_for(not_ready, timeout_s=60, what="/readyz to say partitions are not consumed")
        _, readyz = await http_get(port, "/readyz")
        _, metrics = await http_get(port, "/metrics")
        blocked_lines = log_events(worker, "partition_not_consumed")
        dropped = log_events(worker, "records_below_stored_offset_dropped")
        executions_blocked = await count(db_url, EXECUTIONS)
    finally:
        blocked_exit = worker.terminate()
    offsets_blocked = await stored_offsets(db_url, topics.group, topics.signals)

    reset = await run_cli(
        env, "offsets", "reset", "--topic", topics.signals, "--to-earliest", timeout_s=60
    )
    worker = WorkerProcess(env).start()
    try:
        await worker.wait_started()
        await wait_for_count(db_url, EXECUTIONS, (len(first) + len(second)) * AGENTS, timeout_s=60)
        ready_after = await worker.get("/readyz")
    finally:
        last_exit = worker.terminate()

    ledger = await measure(db_conn, book.expected)
    report(
        "14 recreated topic",
        records=f"{len(first)} signals x {AGENTS} agents, topic recreated, {len(second)} more",
        faults=f"stored {sum(before.values())} past the new end {len(second)}; blocked "
        f"{len(blocked_lines)} partitions, dropped {len(dropped)}, reset then resumed",
        **ledger.figures,
        exit=f"{first_exit}/{blocked_exit}/{last_exit}",
        seed=seed,
    )
    # Every partition that held records of the first run (its stored offset is past the new
    # end): the 12 users' ids are random, and a partition without one (2% of runs) has
    # nothing stored, so nothing to block.
    held = sorted(p for p, offset in before.items() if offset > 0)
    assert held, before
    blocked = sorted(int(e["partition"].rsplit(":", 1)[1]) for e in blocked_lines)
    assert blocked == held, worker.tail()
    assert all(e["level"] == "error" for e in blocked_lines), blocked_lines
    assert dropped == []
    assert executions_blocked == len(first) * AGENTS  # nothing decided, nothing dropped
    assert offsets_blocked == before
    command = f"signal-worker offsets reset --topic {topics.signals} --to-earliest"
    assert command in readyz, readyz
    assert f'signal_worker_partitions_blocked{{partition="{held[0]}",reason=' in metrics, metrics
    assert reset.code == 0, reset
    assert ready_after[0] == 200, ready_after
    assert (first_exit, blocked_exit, last_exit) == (0, 0, 0)
    assert_exactly_once(ledger)
