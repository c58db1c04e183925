"""Commands that cannot be applied are refused with the reason, change nothing, and are
recorded once; a commands topic not co-partitioned with the signals stops the worker at start
in one line. Through `PgStore` on the real tables (issue 23)."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions

from tests.helpers.books import (
    LONG_AGO,
    TOKEN_A,
    make_account,
    set_price,
    set_sol_price,
    signal_message,
)
from tests.helpers.cli import assert_log_lines_then_one_error, run_cli
from tests.helpers.db import connected
from tests.helpers.kafka import Topics, create_topics, delete_topics
from tests.helpers.services import Services
from tests.helpers.workers import WorkerProcess, wait_for, worker_env
from worker.db.store import PgStore
from worker.domain.models import SOL_MINT
from worker.handlers.commands import handle_commands
from worker.handlers.signals import UnknownUser, handle_signals
from worker.messages import decode_command, decode_signal
from worker.settings import Settings

pytestmark = pytest.mark.integration

TRADING = Settings().trading
T0 = datetime(2026, 5, 1, 12, tzinfo=UTC)
LEDGER = """
SELECT (SELECT count(*) FROM agents) AS agents, (SELECT count(*) FROM users) AS users,
       (SELECT count(*) FROM agent_transactions) AS transactions,
       (SELECT coalesce(sum(balance), 0) FROM agent_balances) AS balances,
       (SELECT count(*) FROM agent_config_history) AS versions
"""


async def _apply(db_url: str, n: int, **fields: Any) -> tuple[str, str | None]:
    raw = json.dumps({"idempotency_key": f"k{n}", **fields}).encode()
    command = decode_command(raw).to_domain(coordinates=f"c:0:{n}", at=T0 + timedelta(seconds=n))
    async with connected(db_url) as conn, conn.transaction():
        [result] = await handle_commands(PgStore(conn), [command], trading=TRADING)
    return result.outcome.status, result.outcome.reason


async def test_refused_commands_change_nothing_and_say_why(db_url: str) -> None:
    async with connected(db_url) as conn:
        account = await make_account(conn, [None], created_at=LONG_AGO)
        other = await make_account(conn, [None], created_at=LONG_AGO)
        await set_sol_price(conn, "150")
        before = await conn.fetchrow(LEDGER)
    user, agent = str(account.user_id), str(account.agents[0].agent_id)
    stranger = str(uuid.uuid4())
    cases: list[tuple[dict[str, Any], str]] = [
        ({"command": "deposit", "user_id": stranger, "agent_id": agent, "amount": 1},
         "no user"),
        ({"command": "deposit", "user_id": user, "agent_id": str(other.agents[0].agent_id),
          "amount": 1}, "no agent"),
        ({"command": "withdraw", "user_id": user, "agent_id": agent, "amount": "10.5"},
         "exceeds the balance of 10"),
        ({"command": "replace_config", "user_id": user, "agent_id": agent,
          "config": {"takeProfit": {"mode": "custom", "levels": "x"}}}, "invalid trading_config"),
        ({"command": "patch_config", "user_id": user, "agent_id": agent,
          "patch": {"stopLoss": {"defaultPercentage": "many"}}}, "invalid trading_config"),
        ({"command": "create_user", "user_id": user, "email": "x@y.z"}, "exists already"),
        ({"command": "create_agent", "user_id": user, "agent_id": agent, "name": "again"},
         "exists already"),
        ({"command": "close_positions", "user_id": user, "agent_id": agent}, "no open positions"),
        ({"command": "deposit", "user_id": user, "agent_id": agent, "amount": "999999999999"},
         "beyond what a balance holds"),
        # Its funding is worth more than a USD column holds (10^10 SOL at $150): no agent.
        ({"command": "create_agent", "user_id": user, "name": "rich", "sol": "10000000000"},
         "worth more than a row holds"),
    ]  # fmt: skip
    for n, (fields, reason) in enumerate(cases):
        status, why = await _apply(db_url, n, **fields)
        assert status == "refused", (fields, why)
        assert why is not None and reason in why, (fields, why)
    async with connected(db_url) as conn:
        assert await conn.fetchrow(LEDGER) == before
        rows = await conn.fetch("SELECT status, reason FROM command_results ORDER BY id")
    assert [r["status"] for r in rows] == ["refused"] * len(cases)


async def test_a_command_is_applied_once_per_key(db_url: str) -> None:
    async with connected(db_url) as conn:
        account = await make_account(conn, [None], created_at=LONG_AGO)
    fields = {"command": "deposit", "user_id": str(account.user_id),
              "agent_id": str(account.agents[0].agent_id), "amount": "2.5"}  # fmt: skip
    assert await _apply(db_url, 1, **fields) == ("applied", None)
    # The same key again (a republish, a redelivery): nothing more.
    assert await _apply(db_url, 1, **fields) == ("applied", None)
    async with connected(db_url) as conn:
        balance = await conn.fetchval(
            "SELECT balance FROM agent_balances WHERE agent_id = $1 AND token_address = $2",
            account.agents[0].agent_id,
            "So11111111111111111111111111111111111111112",
        )
        deposits = await conn.fetchval(
            "SELECT count(*) FROM agent_transactions WHERE transaction_type = 'DEPOSIT'"
        )
    assert balance == 12.5
    assert deposits == 2  # the account's funding and this one


async def test_commands_topic_not_co_partitioned_stops_the_worker_in_one_line(
    services: Services, db_url: str, topics: Topics
) -> None:
    other = Topics(f"{topics.signals}x", topics.prices, topics.dlq, topics.group)
    await create_topics(services.kafka_bootstrap, [other.signals], 3)
    await create_topics(services.kafka_bootstrap, [other.commands], 2)
    try:
        env = worker_env(services, db_url, other)
        result = await run_cli(env, "run", timeout_s=60)
    finally:
        await delete_topics(services.kafka_bootstrap, [other.signals, other.commands])
    assert result.code != 0
    last = assert_log_lines_then_one_error(result.stderr, "run")
    assert "has 2 partitions and SIGNALS_TOPIC" in last
    assert "co-partitioned" in last


async def _waiting_for_a_lock(conn: asyncpg.Connection, pid: int) -> None:
    """Until session `pid` waits for a lock."""
    query = "SELECT count(*) FROM pg_locks WHERE pid = $1 AND NOT granted"
    while True:
        if await conn.fetchval(query, pid):
            return
        await asyncio.sleep(0.02)


async def test_a_user_created_with_an_email_taken_meanwhile_is_refused(db_url: str) -> None:
    # Another writer (another worker's lane with another user's create_user, Nexgent's UI)
    # inserts the email and commits only after this command checked that it was free: the
    # command is refused, not recorded as applied with no user made.
    user = uuid.uuid4()
    raw = json.dumps(
        {"command": "create_user", "user_id": str(user), "email": "race@example.com",
         "idempotency_key": "create"}
    ).encode()  # fmt: skip
    command = decode_command(raw).to_domain(coordinates="c:0:1", at=T0)
    async with (
        connected(db_url) as other,
        connected(db_url) as conn,
        connected(db_url) as watcher,
    ):
        async with other.transaction():
            await other.execute(
                "INSERT INTO users (id, email) VALUES ($1, 'race@example.com')", uuid.uuid4()
            )

            async def apply() -> list[Any]:
                async with conn.transaction():
                    return await handle_commands(PgStore(conn), [command], trading=TRADING)

            applying = asyncio.create_task(apply())
            await _waiting_for_a_lock(watcher, conn.get_server_pid())
        [result] = await asyncio.wait_for(applying, 20)
        made = await watcher.fetchval("SELECT count(*) FROM users WHERE id = $1", user)
        row = await watcher.fetchrow("SELECT status, reason FROM command_results")
    assert made == 0
    assert result.outcome.status == "refused"
    assert row is not None
    assert row["status"] == "refused"
    assert "race@example.com" in row["reason"]


async def test_a_config_at_the_bounds_decode_lets_through_is_stored(db_url: str) -> None:
    # The bounds `decode_command` holds a config or patch to are what jsonb stores: the
    # largest and finest numbers numeric holds, the deepest nesting allowed.
    async with connected(db_url) as conn:
        account = await make_account(conn, [None], created_at=LONG_AGO)
    user, agent = str(account.user_id), str(account.agents[0].agent_id)
    deep = "[" * 62 + "]" * 62  # 64 levels with the patch and its key
    head = {"command": "patch_config", "idempotency_key": "edge", "user_id": user}
    raw = (
        json.dumps({**head, "agent_id": agent}).encode()[:-1]
        + (', "patch": {"xBig": 9.5e131071, "xFine": 1e-16383, "xDeep": ' + deep + "}}").encode()
    )
    command = decode_command(raw).to_domain(coordinates="c:0:1", at=T0)
    async with connected(db_url) as conn, conn.transaction():
        [result] = await handle_commands(PgStore(conn), [command], trading=TRADING)
    assert result.outcome.status == "applied", result.outcome.reason
    assert sorted(result.outcome.changes["unknown_keys"]) == ["xBig", "xDeep", "xFine"]


async def test_a_close_whose_rows_would_not_fit_keeps_the_position_with_the_reason(
    db_url: str,
) -> None:
    # A wallet so full that the sale's credit would take its SOL beyond numeric(30,18):
    # the close is refused with the reason (as an exit on a tick skips that trade), not a
    # database error that fails the chunk and dead-letters the command.
    async with connected(db_url) as conn:
        account = await make_account(conn, [None], created_at=LONG_AGO)
        await set_sol_price(conn, "0.001")
        await set_price(conn, TOKEN_A, "0.001")
        signal = decode_signal(
            json.dumps(signal_message(account.user_id, price_usd="0.001")).encode()
        ).to_domain(coordinates="s:0:1", received_at=T0)
        async with conn.transaction():
            [bought] = await handle_signals(PgStore(conn), [signal], trading=TRADING)
        assert not isinstance(bought, UnknownUser)
        assert bought.outcomes[0].decision.status == "success"
        await conn.execute(
            "UPDATE agent_balances SET balance = 999999999990 WHERE token_address = $1",
            SOL_MINT,
        )
        await set_price(conn, TOKEN_A, "1")  # the position is worth about 2000 SOL now
        before = await conn.fetchrow(LEDGER)
    status, why = await _apply(
        db_url,
        1,
        command="close_positions",
        user_id=str(account.user_id),
        agent_id=str(account.agents[0].agent_id),
    )
    assert status == "refused"
    assert why is not None
    assert "agent_balances.balance would be" in why
    async with connected(db_url) as conn:
        assert await conn.fetchrow(LEDGER) == before
        assert await conn.fetchval("SELECT count(*) FROM agent_positions") == 1


async def test_a_key_reused_for_another_command_is_told_apart_from_a_redelivery(
    db_url: str,
) -> None:
    async with connected(db_url) as conn:
        account = await make_account(conn, [None], created_at=LONG_AGO)
    base = {"user_id": str(account.user_id), "agent_id": str(account.agents[0].agent_id),
            "idempotency_key": "same"}  # fmt: skip

    async def apply(n: int, **fields: Any) -> Any:
        raw = json.dumps({**base, **fields}).encode()
        command = decode_command(raw).to_domain(coordinates=f"c:0:{n}", at=T0)
        async with connected(db_url) as conn, conn.transaction():
            [result] = await handle_commands(PgStore(conn), [command], trading=TRADING)
        return result

    first = await apply(1, command="deposit", amount="1")
    # A redelivery, a re-publish (stamped again after a timeout): the same command.
    again = await apply(2, command="deposit", amount="1.0", created_at="2026-05-01T12:00:09Z")
    other = await apply(3, command="withdraw", amount="5")
    larger = await apply(4, command="deposit", amount="1000")
    assert (first.duplicate, first.reused) == (False, False)
    assert (again.duplicate, again.reused) == (True, False)
    assert (other.duplicate, other.reused, other.stored) == (True, True, "deposit")
    assert (larger.duplicate, larger.reused, larger.stored) == (True, True, "deposit")


@pytest.mark.timeout(150)
async def test_partitions_added_to_one_user_topic_while_running_stop_the_worker_in_one_line(
    services: Services, db_url: str, topics: Topics
) -> None:
    worker = WorkerProcess(worker_env(services, db_url, topics)).start()
    try:
        await worker.wait_started()
        admin = AIOKafkaAdminClient(bootstrap_servers=services.kafka_bootstrap)
        await admin.start()
        try:
            await admin.create_partitions({topics.commands: NewPartitions(total_count=4)})
        finally:
            await admin.close()

        async def stopped() -> bool:
            return not worker.is_alive()

        # The group sees the new partition at its next metadata refresh (30 s at most).
        await wait_for(stopped, timeout_s=90, what="the worker to stop")
    finally:
        code = worker.terminate()
    assert code == 1, worker.tail()
    last = worker.lines[-1]
    assert "now has 4 partitions and SIGNALS_TOPIC" in last, worker.tail()
    assert "Traceback" not in "".join(worker.lines[-3:])
