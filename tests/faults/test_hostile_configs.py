"""Scenario 9: agents' stored configs broken after their positions were opened.

Before: one agent's config of `1e400` (valid jsonb) or JSON nested 2,000 deep made every
signal of its user a dead letter (no agent of that user traded) and every tick of a token it
held a dead letter too (no position in the token stopped out, the price not stored); an
invalid config left its positions without exits. Now only that agent's executions fail,
with the reason; ticks go on for everyone; broken agents' positions exit by the rules they
were opened with; keys the worker does not know are reported, not refused.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import asyncpg
import pytest

from tests.helpers.books import Book, make_account, mint, set_sol_price
from tests.helpers.kafka import Topics, read_all, send_all
from tests.helpers.ledger import EXECUTIONS, Report, assert_exactly_once, measure, seeded
from tests.helpers.services import Services
from tests.helpers.workers import (
    WorkerProcess,
    assert_ran_through,
    wait_for,
    wait_for_count,
    worker_env,
)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]

GOOD = 3
HOSTILE = {
    "1e400": '{"purchaseLimits": {"maxPurchasePerToken": 1e400}}',
    "2,000 deep": '{"signals": ' + "[" * 2000 + "]" * 2000 + "}",
    "minScore 9": '{"signals": {"minScore": 9}}',
    "wrong type": '{"stopLoss": {"defaultPercentage": "loose"}}',
}
# Valid, with keys the worker ignores (a typo, and the source's legacy key).
UNKNOWN_KEYS = '{"signals": {"minscore": 2}, "stopLoss": {"continuousTrailing": true}}'


async def test_hostile_configs_fail_only_their_agents_and_positions_keep_their_exits(
    services: Services, db_url: str, topics: Topics, db_conn: asyncpg.Connection, report: Report
) -> None:
    seed, rng = seeded("hostile-configs")
    await set_sol_price(db_conn, "100")
    fixed = {"positionCalculator": {"randomization": {"enabled": False}}}
    agents_n = GOOD + len(HOSTILE) + 1
    account = await make_account(db_conn, [fixed] * agents_n, deposit_sol=Decimal(100))
    book = Book([account])
    held, later = mint(rng), mint(rng)
    # Every agent buys `held` while its config is still valid.
    first = book.signals(1, [held])
    first[0].update(price_usd="1", signal_strength=5)
    broken = dict(zip(HOSTILE, account.agents[GOOD:], strict=False))
    reported = account.agents[-1]
    worker = WorkerProcess(worker_env(services, db_url, topics)).start()
    try:
        await worker.wait_started()
        await send_all(services.kafka_bootstrap, topics.signals, first)
        await wait_for_count(db_url, EXECUTIONS, agents_n)
        for name, agent in broken.items():
            await db_conn.execute(
                "UPDATE agents SET trading_config = $2::text::jsonb WHERE id = $1",
                agent.agent_id,
                HOSTILE[name],
            )
        await db_conn.execute(
            "UPDATE agents SET trading_config = $2::text::jsonb WHERE id = $1",
            reported.agent_id,
            UNKNOWN_KEYS,
        )
        # A second signal: the broken agents fail with their reasons, the others buy.
        second = book.signals(1, [later], start=1)
        second[0].update(price_usd="1", signal_strength=5)
        await send_all(services.kafka_bootstrap, topics.signals, second)
        await wait_for_count(db_url, EXECUTIONS, 2 * agents_n)
        # A tick 50% down in `held`: through every position's -32% stop, the broken ones'
        # included (they keep the rules they were opened with).
        now = datetime.now(UTC)
        await send_all(
            services.kafka_bootstrap,
            topics.prices,
            [{"token_address": held, "price_usd": "0.5", "ts": now.isoformat()}],
        )

        async def all_closed() -> bool:
            n = await db_conn.fetchval(
                "SELECT count(*) FROM agent_positions WHERE token_address = $1", held
            )
            return int(n) == 0

        await wait_for(all_closed, timeout_s=30, what="every position in the token to close")
        dead = await read_all(services.kafka_bootstrap, topics.dlq)
        price = await db_conn.fetchval(
            "SELECT price_usd FROM token_prices WHERE token_address = $1", held
        )
        alive = worker.is_alive()
    finally:
        code = worker.terminate()

    second_rows = await db_conn.fetch(
        "SELECT e.agent_id, e.status, e.error FROM signal_executions e "
        "JOIN trading_signals s ON s.id = e.signal_id WHERE s.token_address = $1",
        later,
    )
    by_agent = {r["agent_id"]: (r["status"], r["error"]) for r in second_rows}
    closes = await db_conn.fetchval(
        "SELECT count(*) FROM agent_historical_swaps WHERE token_address = $1 "
        "AND close_reason = 'stop_loss'",
        held,
    )
    ledger = await measure(db_conn, book.expected)
    report(
        "9 hostile configs",
        records=f"2 signals x {agents_n} agents + 1 tick",
        faults=f"{len(HOSTILE)} configs broken after buying ({', '.join(HOSTILE)}), 1 with "
        f"unknown keys; {closes} stop-loss closes of {agents_n}, {len(dead)} dead letters",
        **ledger.figures,
        exit=code,
        seed=seed,
    )
    assert_ran_through(worker, code, alive=alive)
    assert dead == [], "a record was dead-lettered because of an agent's config"
    assert price == Decimal("0.5")
    assert closes == agents_n
    for name, agent in broken.items():
        status, error = by_agent[agent.agent_id]
        assert status == "failed", name
        assert error is not None and error.startswith("invalid trading_config"), (name, error)
    # jsonb prints 1e400 in full: 401 digits, more than the JSON reader takes.
    assert by_agent[broken["1e400"].agent_id][1] == (
        "invalid trading_config: not JSON this worker accepts: a number with 401 digits is "
        "too long (at most 40 digits)"
    )
    assert by_agent[broken["2,000 deep"].agent_id][1] == (
        "invalid trading_config: not JSON this worker accepts: nested too deeply"
    )
    for agent in [*account.agents[:GOOD], reported]:
        assert by_agent[agent.agent_id] == ("success", None)
    warned = [line for line in worker.lines if '"agent_config_unknown_keys"' in line]
    assert len(warned) == 1 and "signals.minscore" in warned[0], warned
    invalid = [line for line in worker.lines if '"agent_config_invalid"' in line]
    assert len(invalid) == len(HOSTILE), invalid
    assert_exactly_once(ledger)
