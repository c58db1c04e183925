"""Scenario 6: bad rows in the database fail only their own agent, never the signal."""

from __future__ import annotations

from decimal import Decimal

import asyncpg
import pytest

from tests.helpers.books import Book, make_account, mint, set_sol_price
from tests.helpers.kafka import Topics, read_all, send_all
from tests.helpers.ledger import EXECUTIONS, Report, assert_exactly_once, measure, seeded
from tests.helpers.services import Services
from tests.helpers.workers import WorkerProcess, assert_ran_through, wait_for_count, worker_env

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]

SIGNALS, GOOD = 10, 2
# Stored trading_config (jsonb text) that no agent can trade with.
BAD_CONFIGS = {
    "minScore 9": '{"signals": {"minScore": 9}}',
    "a JSON string": '"oops"',
    "a JSON array": "[1, 2]",
    "a JSON number": "7",
    "a wrong type deep inside": '{"purchaseLimits": {"maxOpenPositions": "many"}}',
}
NO_WALLET = "no wallet row"


async def test_bad_agent_rows_fail_only_their_agent(
    services: Services, db_url: str, topics: Topics, db_conn: asyncpg.Connection, report: Report
) -> None:
    seed, rng = seeded("bad-data")
    await set_sol_price(db_conn, "100")
    faults = [*BAD_CONFIGS, NO_WALLET]
    account = await make_account(db_conn, [None] * (GOOD + len(faults)), deposit_sol=Decimal(100))
    good = account.agents[:GOOD]
    bad = dict(zip(faults, account.agents[GOOD:], strict=True))
    for fault, stored in BAD_CONFIGS.items():
        await db_conn.execute(
            "UPDATE agents SET trading_config = $2::text::jsonb WHERE id = $1",
            bad[fault].agent_id,
            stored,
        )
    # The wallet goes, and with it (cascade) its balances and deposit.
    await db_conn.execute(
        "DELETE FROM agent_wallets WHERE wallet_address = $1", bad[NO_WALLET].wallet_address
    )
    book = Book([account])
    tokens = [mint(rng) for _ in range(SIGNALS)]  # a new token each time: every buy is allowed
    signals = book.signals(SIGNALS, tokens)
    for s in signals:
        s["price_usd"] = "0.5"
        s["signal_strength"] = 5

    worker = WorkerProcess(worker_env(services, db_url, topics)).start()
    try:
        await worker.wait_started()
        await send_all(services.kafka_bootstrap, topics.signals, signals)
        await wait_for_count(db_url, EXECUTIONS, SIGNALS * len(account.agents), timeout_s=60)
        dead = await read_all(services.kafka_bootstrap, topics.dlq)
        alive = worker.is_alive()
    finally:
        code = worker.terminate()

    rows = await db_conn.fetch("SELECT agent_id, status, error FROM signal_executions")
    by_agent: dict[object, list[tuple[str, str | None]]] = {}
    for r in rows:
        by_agent.setdefault(r["agent_id"], []).append((r["status"], r["error"]))
    ledger = await measure(db_conn, book.expected)
    good_success = sum(s == "success" for a in good for s, _ in by_agent.get(a.agent_id, []))
    bad_failed = sum(s == "failed" for a in bad.values() for s, _ in by_agent.get(a.agent_id, []))
    report(
        "6 bad data",
        records=f"{SIGNALS} signals x {len(account.agents)} agents",
        faults=f"{len(faults)} broken agents ({', '.join(faults)}); {bad_failed} failed, "
        f"{good_success} good buys, {len(dead)} dead letters",
        **ledger.figures,
        exit=code,
        seed=seed,
    )
    assert_ran_through(worker, code, alive=alive)
    assert dead == [], "a signal was dead-lettered because of one agent's bad row"
    for fault, agent in bad.items():
        outcomes = by_agent.get(agent.agent_id, [])
        assert len(outcomes) == SIGNALS, fault
        for status, error in outcomes:
            assert status == "failed", f"{fault}: {status} {error}"
            assert error, f"{fault}: failed without a reason"
    assert "wallet" in (by_agent[bad[NO_WALLET].agent_id][0][1] or "")
    assert "minScore" in (by_agent[bad["minScore 9"].agent_id][0][1] or "")
    for agent in good:
        assert by_agent.get(agent.agent_id) == [("success", None)] * SIGNALS, by_agent.get(
            agent.agent_id
        )
    assert_exactly_once(ledger)
