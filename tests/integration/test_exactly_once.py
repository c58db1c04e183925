"""Exactly once across crashes and group changes: worker processes, a real broker and database."""

from __future__ import annotations

import asyncio
import random

import asyncpg
import pytest

from tests.helpers.books import (
    TOKEN_A,
    TOKEN_B,
    TOKEN_C,
    Account,
    make_account,
    set_sol_price,
    signal_message,
)
from tests.helpers.db import count
from tests.helpers.kafka import Topics, create_test_topics, delete_topics, publish
from tests.helpers.services import Services
from tests.helpers.workers import WorkerProcess, wait_for_count, worker_env
from worker.db.ledger import find_violations

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

TOKENS = [TOKEN_A, TOKEN_B, TOKEN_C]


async def _accounts(conn: asyncpg.Connection, users: int, agents: int) -> list[Account]:
    await set_sol_price(conn, "100")
    return [await make_account(conn, [None] * agents) for _ in range(users)]


def _stream(accounts: list[Account], per_user: int) -> list[dict[str, object]]:
    messages: list[dict[str, object]] = []
    for i in range(per_user):
        for a in accounts:
            messages.append(
                signal_message(
                    a.user_id, TOKENS[i % 3], idempotency_key=f"s{i}", signal_strength=1 + i % 5
                )
            )
    return messages


async def _assert_exactly_once(conn: asyncpg.Connection, signals: int, agents: int) -> None:
    assert await conn.fetchval("SELECT count(*) FROM trading_signals") == signals
    assert await conn.fetchval("SELECT count(*) FROM signal_executions") == signals * agents
    assert (
        await conn.fetchval(
            "SELECT count(*) FROM (SELECT signal_id, agent_id FROM signal_executions "
            "GROUP BY 1, 2 HAVING count(*) > 1) d"
        )
        == 0
    )
    # Every signal reached every agent of its user: no gap.
    assert (
        await conn.fetchval(
            "SELECT count(*) FROM (SELECT signal_id FROM signal_executions GROUP BY 1 "
            "HAVING count(*) <> $1) g",
            agents,
        )
        == 0
    )
    assert await find_violations(conn) == []


async def test_sigkill_mid_stream_and_restart_executes_each_pair_once(
    services: Services, db_url: str, topics: Topics, db_conn: asyncpg.Connection
) -> None:
    users, agents, per_user = 5, 10, 100  # 500 signals x 10 agents
    accounts = await _accounts(db_conn, users, agents)
    env = worker_env(services, db_url, topics)
    worker = WorkerProcess(env).start()
    await worker.wait_started()
    stream = _stream(accounts, per_user)

    async def feed() -> None:
        # Paced like a live stream (about 5 s), so the kill lands mid-stream however fast
        # the worker is.
        for i in range(0, len(stream), 25):
            await publish(services.kafka_bootstrap, topics.signals, stream[i : i + 25])
            await asyncio.sleep(0.25)

    feeder = asyncio.create_task(feed())
    killed_at = 0
    try:
        await wait_for_count(db_url, "SELECT count(*) FROM signal_executions", 1000)
        await asyncio.sleep(random.uniform(0, 0.3))
        worker.kill()
        killed_at = await count(db_url, "SELECT count(*) FROM signal_executions")
        worker = WorkerProcess(env).start()
        await worker.wait_started()
        await feeder
        await wait_for_count(
            db_url,
            "SELECT count(*) FROM signal_executions",
            users * per_user * agents,
            timeout_s=120,
        )
    finally:
        feeder.cancel()
        code = worker.terminate()
    assert code == 0, worker.tail()
    assert killed_at < users * per_user * agents, "the kill came after the end of the stream"
    print(
        f"killed with {killed_at} executions written; restarted; "
        f"{users * per_user * agents} in the end"
    )
    await _assert_exactly_once(db_conn, users * per_user, agents)


async def test_group_of_two_then_three_workers_has_no_duplicate_and_no_gap(
    services: Services, db_url: str, db_conn: asyncpg.Connection
) -> None:
    topics = await create_test_topics(services, partitions=6)
    users, agents, per_user = 6, 5, 60
    accounts = await _accounts(db_conn, users, agents)
    env = worker_env(services, db_url, topics)
    stream = _stream(accounts, per_user)
    workers = [WorkerProcess(env).start(), WorkerProcess(env).start()]
    try:
        for w in workers:
            await w.wait_started()
        await publish(services.kafka_bootstrap, topics.signals, stream[: len(stream) // 2])
        await wait_for_count(db_url, "SELECT count(*) FROM signal_executions", 200)
        third = WorkerProcess(env).start()
        workers.append(third)
        await third.wait_started()
        await publish(services.kafka_bootstrap, topics.signals, stream[len(stream) // 2 :])
        await wait_for_count(
            db_url, "SELECT count(*) FROM signal_executions", len(stream) * agents, timeout_s=120
        )
    finally:
        codes = [w.terminate() for w in workers]
        await delete_topics(
            services.kafka_bootstrap, [topics.signals, topics.prices, topics.dlq, topics.commands]
        )
    assert codes == [0, 0, 0], "\n---\n".join(w.tail() for w in workers)
    # The third worker took over partitions: it wrote some of the stream too.
    assert any('"partitions_assigned"' in line and "signals:" in line for line in workers[2].lines)
    await _assert_exactly_once(db_conn, len(stream), agents)
