"""Scenario 4: three workers in one group; one SIGKILLed and one added mid-stream."""

from __future__ import annotations

import asyncpg
import pytest

from tests.helpers.books import make_book, mint
from tests.helpers.db import count
from tests.helpers.kafka import create_test_topics, delete_topics, send_all
from tests.helpers.ledger import EXECUTIONS, Report, assert_exactly_once, measure, seeded
from tests.helpers.services import Services
from tests.helpers.workers import WorkerProcess, log_events, wait_for, wait_for_count, worker_env

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]

# 1,200 signals x 5 agents over 6 partitions; 24 users, so that (keyed by user) every
# worker's pair of partitions holds some of them.
USERS, AGENTS, PER_USER = 24, 5, 50


async def test_group_survives_a_killed_member_and_a_new_one(
    services: Services, db_url: str, db_conn: asyncpg.Connection, report: Report
) -> None:
    seed, rng = seeded("group")
    topics = await create_test_topics(services, partitions=6)
    tokens = [mint(rng) for _ in range(20)]
    book = await make_book(db_conn, USERS, AGENTS)
    first = book.signals(PER_USER // 2, tokens)
    second = book.signals(PER_USER // 2, tokens, start=PER_USER // 2)
    total = (len(first) + len(second)) * AGENTS
    env = worker_env(services, db_url, topics)
    workers = [WorkerProcess(env).start() for _ in range(3)]
    victim = workers[rng.randrange(3)]
    try:
        for w in workers:
            await w.wait_started()
        await send_all(services.kafka_bootstrap, topics.signals, first)
        await wait_for_count(
            db_url, EXECUTIONS, rng.randrange(len(first) * AGENTS // 5, len(first) * AGENTS // 2)
        )
        victim.kill()
        killed_at = await count(db_url, EXECUTIONS)
        newcomer = WorkerProcess(env).start()
        workers.append(newcomer)
        await newcomer.wait_started()

        async def newcomer_assigned() -> bool:
            return any(
                p.startswith(f"{topics.signals}:")
                for e in log_events(newcomer, "partitions_assigned")
                for p in e["partitions"]
            )

        # The rest of the stream comes once the group has settled with the newcomer in it.
        await wait_for(newcomer_assigned, timeout_s=60, what="the new worker's partitions")
        await send_all(services.kafka_bootstrap, topics.signals, second)
        await wait_for_count(db_url, EXECUTIONS, total, timeout_s=150)
    finally:
        codes = [w.terminate() for w in workers if w is not victim]
        await delete_topics(
            services.kafka_bootstrap, [topics.signals, topics.prices, topics.dlq, topics.commands]
        )

    ledger = await measure(db_conn, book.expected)
    by_worker = [len(log_events(w, "signal_processed")) for w in workers]
    report(
        "4 group changes",
        records=f"{len(first) + len(second)} signals x {AGENTS} agents, 6 partitions",
        faults=f"worker {workers.index(victim)} of 3 SIGKILLed at {killed_at} executions, "
        f"a 4th added; signals processed per worker {by_worker}",
        **ledger.figures,
        seed=seed,
    )
    assert codes == [0, 0, 0], "\n---\n".join(w.tail() for w in workers)
    assert killed_at < total, "the kill came after the end of the stream"
    assert by_worker[workers.index(victim)] > 0, "the killed worker had processed nothing"
    assert by_worker[3] > 0, "the added worker took no part in the stream"
    assert_exactly_once(ledger)
