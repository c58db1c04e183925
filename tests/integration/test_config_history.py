"""Config history (`schema/0008_agent_config_history.sql`): the triggers keep every version
of an agent's settings with its time, and live and replay decide each event with the
version in force at its time, on a real database."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from tests.builders import add_agent, add_user
from tests.helpers.books import TOKEN_A, TOKEN_B, Account, make_account, set_sol_price
from tests.helpers.cli import run_cli
from tests.helpers.kafka import Topics
from tests.helpers.services import Services
from tests.helpers.workers import worker_env
from worker.db.replay import read_agents, read_history
from worker.db.store import PgStore
from worker.domain.models import SOL_MINT, PriceTick, Signal
from worker.handlers.config_cache import ConfigTexts
from worker.handlers.signals import handle_signals
from worker.handlers.ticks import handle_prices
from worker.replay.engine import Variant, record_of, replay
from worker.settings import Settings

pytestmark = pytest.mark.integration

FIXED: dict[str, Any] = {"positionCalculator": {"randomization": {"enabled": False}}}
PICKY: dict[str, Any] = {**FIXED, "signals": {"minScore": 5}}  # skips strength-4 signals
INVALID: dict[str, Any] = {**FIXED, "stopLoss": {"mode": "sideways"}}
SECOND = timedelta(seconds=1)


async def _versions(conn: asyncpg.Connection, agent_id: uuid.UUID) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT * FROM agent_config_history WHERE agent_id = $1 ORDER BY valid_from, id", agent_id
    )


async def _edit(conn: asyncpg.Connection, agent_id: uuid.UUID, config: dict[str, Any]) -> datetime:
    """Change the agent's config as any writer would (a plain UPDATE); the edit's time."""
    await conn.execute(
        "UPDATE agents SET trading_config = $2::text::jsonb WHERE id = $1",
        agent_id,
        json.dumps(config),
    )
    return (await _versions(conn, agent_id))[-1]["valid_from"]  # type: ignore[no-any-return]


def _signal(account: Account, key: str, at: datetime, token: str = TOKEN_A) -> Signal:
    return Signal(user_id=account.user_id, token_address=token, signal_type="Velocity",
                  signal_strength=4, idempotency_key=key, created_at=at,
                  price_usd=Decimal(1))  # fmt: skip


async def _decide(conn: asyncpg.Connection, signals: list[Signal]) -> None:
    async with conn.transaction():
        await handle_signals(PgStore(conn), signals, trading=Settings().trading)


async def _funded_before(conn: asyncpg.Connection, at: datetime) -> None:
    """The deposits and the SOL/USD price dated before `at`: a replay from then starts with
    them."""
    await conn.execute(
        "UPDATE agent_transactions SET transaction_time = $1 WHERE transaction_type = 'DEPOSIT'",
        at - timedelta(hours=1),
    )
    await conn.execute("UPDATE token_prices SET price_ts = $1", at - timedelta(hours=1))


async def _statuses(conn: asyncpg.Connection) -> dict[tuple[str, uuid.UUID], str]:
    rows = await conn.fetch(
        "SELECT s.idempotency_key, e.agent_id, e.status FROM signal_executions e "
        "JOIN trading_signals s ON s.id = e.signal_id"
    )
    return {(r["idempotency_key"], r["agent_id"]): r["status"] for r in rows}


async def _replayed(
    conn: asyncpg.Connection, user_id: uuid.UUID, since: datetime
) -> dict[tuple[str, uuid.UUID], str]:
    """The stored config history replayed in memory: each execution's status."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        agents = await read_agents(conn, None, user_id)
        record = record_of(agents, await read_history(conn, agents, since=since))
    assert record is not None
    run = await replay(record.start, record.events, Variant("stored config"), Settings())
    keys = {e.signal.id: e.signal.idempotency_key for e in record.events if e.signal is not None}
    return {(keys[s], a): row.status.value for (s, a), row in run.store.executions.items()}


# --- the triggers ---------------------------------------------------------------------------


async def test_an_insert_and_each_decision_column_updated_record_a_version(
    db_conn: asyncpg.Connection,
) -> None:
    agent_id = await add_agent(db_conn, await add_user(db_conn), config=FIXED)
    [first] = await _versions(db_conn, agent_id)
    created = await db_conn.fetchval("SELECT created_at FROM agents WHERE id = $1", agent_id)
    assert first["valid_from"] == created
    assert json.loads(first["trading_config"]) == FIXED
    updates = [
        ("trading_config", json.dumps(PICKY), "::text::jsonb"),
        ("trading_mode", "live", ""),
        ("automated_trading_simulation", False, ""),
        ("automated_trading_live", False, ""),
    ]
    for n, (column, value, cast) in enumerate(updates, start=2):
        await db_conn.execute(f"UPDATE agents SET {column} = $2{cast} WHERE id = $1",
                              agent_id, value)  # fmt: skip
        versions = await _versions(db_conn, agent_id)
        assert len(versions) == n, column
        assert versions[-1]["valid_from"] >= versions[-2]["valid_from"]
    last = (await _versions(db_conn, agent_id))[-1]
    assert (last["trading_mode"], last["automated_trading_simulation"],
            last["automated_trading_live"]) == ("live", False, False)  # fmt: skip
    assert json.loads(last["trading_config"]) == PICKY


async def test_unrelated_updates_and_unchanged_values_record_nothing(
    db_conn: asyncpg.Connection,
) -> None:
    agent_id = await add_agent(db_conn, await add_user(db_conn), config=FIXED)
    await db_conn.execute(
        "UPDATE agents SET name = 'renamed', updated_at = now() - interval '1 day' WHERE id = $1",
        agent_id,
    )
    # The same settings written again (a UI saving an unchanged form; jsonb compares values).
    await db_conn.execute(
        "UPDATE agents SET trading_config = $2::text::jsonb, trading_mode = 'simulation', "
        "automated_trading_simulation = true WHERE id = $1",
        agent_id,
        json.dumps(FIXED, indent=4),
    )
    assert len(await _versions(db_conn, agent_id)) == 1


async def test_deleting_an_agent_deletes_its_history(db_conn: asyncpg.Connection) -> None:
    agent_id = await add_agent(db_conn, await add_user(db_conn), config=FIXED)
    await db_conn.execute("DELETE FROM agents WHERE id = $1", agent_id)
    assert await _versions(db_conn, agent_id) == []


# --- live and replay ------------------------------------------------------------------------


async def test_an_edit_mid_stream_decides_the_signals_before_it_with_the_old_config(
    db_conn: asyncpg.Connection,
) -> None:
    """A backlog: signals from before and after an edit, all processed after it (in one
    batch and one by one); replay decides them the same way."""
    await set_sol_price(db_conn, "100")
    account = await make_account(db_conn, [FIXED])
    agent_id = account.agents[0].agent_id
    edited = await _edit(db_conn, agent_id, PICKY)
    before, after = edited - 10 * SECOND, edited + 10 * SECOND
    await _funded_before(db_conn, before)
    # One batch spanning the edit, then one signal at a time.
    await _decide(db_conn, [_signal(account, "b1", before), _signal(account, "a1", after)])
    await _decide(db_conn, [_signal(account, "b2", before + SECOND, TOKEN_B)])
    await _decide(db_conn, [_signal(account, "a2", after + SECOND, TOKEN_B)])
    live = await _statuses(db_conn)
    assert live == {
        ("b1", agent_id): "success",
        ("a1", agent_id): "skipped",  # minScore 5 from the edit on
        ("b2", agent_id): "success",
        ("a2", agent_id): "skipped",
    }
    assert await _replayed(db_conn, account.user_id, before - SECOND) == live


async def test_an_edit_to_an_invalid_config_fails_only_that_agent_from_its_time(
    db_conn: asyncpg.Connection, services: Services, topics: Topics, db_url: str
) -> None:
    await set_sol_price(db_conn, "100")
    account = await make_account(db_conn, [FIXED, FIXED])
    broken, other = (a.agent_id for a in account.agents)
    edited = await _edit(db_conn, broken, INVALID)
    before, after = edited - 10 * SECOND, edited + 10 * SECOND
    await _funded_before(db_conn, before)
    await _decide(db_conn, [_signal(account, "b", before), _signal(account, "a", after, TOKEN_B)])
    live = await _statuses(db_conn)
    assert live == {
        ("b", broken): "success",
        ("a", broken): "failed",
        ("b", other): "success",
        ("a", other): "success",
    }
    reason = await db_conn.fetchval(
        "SELECT error FROM signal_executions WHERE agent_id = $1 AND status = 'failed'", broken
    )
    assert reason.startswith("invalid trading_config")
    assert await _replayed(db_conn, account.user_id, before - SECOND) == live
    # `replay` over every agent runs, and says which agent had an invalid version.
    env = worker_env(services, db_url, topics)
    since = (before - SECOND).isoformat()
    run = await run_cli(env, "replay", "--from", since, "--vary", "stopLoss.defaultPercentage=-5")
    assert run.code == 0, run.stderr
    assert "a stored version of its config is invalid" in run.stdout


async def test_an_edit_within_a_chunk_of_ticks_applies_from_its_tick(
    db_conn: asyncpg.Connection,
) -> None:
    """Two ticks at -10%, one before and one after the stop tightens from -32% to -5%,
    processed in one chunk after the edit: only the second stops the position out."""
    await set_sol_price(db_conn, "100")
    account = await make_account(db_conn, [FIXED])
    agent_id = account.agents[0].agent_id
    edited = await _edit(db_conn, agent_id, {**FIXED, "stopLoss": {"defaultPercentage": -5}})
    await _decide(db_conn, [_signal(account, "s", edited - 20 * SECOND)])
    await db_conn.execute("UPDATE token_prices SET price_ts = $1", edited - 30 * SECOND)
    ticks = [
        PriceTick(SOL_MINT, Decimal(100), edited - 15 * SECOND),
        PriceTick(TOKEN_A, Decimal("0.9"), edited - 10 * SECOND),
        PriceTick(TOKEN_A, Decimal("0.89"), edited + 10 * SECOND),
    ]
    async with db_conn.transaction():
        outcomes = await handle_prices(PgStore(db_conn), ticks, configs=ConfigTexts(),
                                       trading=Settings().trading)  # fmt: skip
    assert [o.closes for o in outcomes] == [{}, {}, {"stop_loss": 1}]


async def test_an_agent_without_a_wallet_replays_its_failed_executions(
    db_conn: asyncpg.Connection,
) -> None:
    await set_sol_price(db_conn, "100")
    account = await make_account(db_conn, [FIXED])
    bare = await add_agent(db_conn, account.user_id, config=FIXED)
    await db_conn.execute(
        "UPDATE agents SET created_at = created_at - interval '1 day' WHERE id = $1", bare
    )
    now = await db_conn.fetchval("SELECT now()")
    await _funded_before(db_conn, now)
    await _decide(db_conn, [_signal(account, "s", now)])
    live = await _statuses(db_conn)
    assert live[("s", bare)] == "failed"
    replayed = await _replayed(db_conn, account.user_id, now - SECOND)
    assert replayed == live


async def test_a_position_without_rules_keeps_the_last_valid_config_of_its_agent(
    db_conn: asyncpg.Connection,
) -> None:
    """Positions opened before rule sets were kept (exit_rules_id NULL) whose agents broke
    their configs since: 62 minutes on at +5% (in the default stale band), the one whose
    agent's last valid version turned stale-trade closes off stays open; the one whose
    agent never had a valid config is closed by the defaults."""
    await set_sol_price(db_conn, "100")
    account = await make_account(db_conn, [FIXED, FIXED])
    kept, never_valid = (a.agent_id for a in account.agents)
    # The first version (stale closes on) opens the positions; the newest valid one turns
    # stale closes off; then the config breaks.
    opened = await _edit(db_conn, kept, {**FIXED, "staleTrade": {"enabled": False}})
    await _decide(db_conn, [_signal(account, "s", opened - 10 * SECOND)])
    await db_conn.execute("UPDATE agent_positions SET exit_rules_id = NULL")
    await _edit(db_conn, kept, INVALID)
    # The other agent's only version is invalid (as 0008's backfill may have found it).
    await _edit(db_conn, never_valid, INVALID)
    await db_conn.execute(
        "DELETE FROM agent_config_history WHERE agent_id = $1 AND id < "
        "(SELECT max(id) FROM agent_config_history WHERE agent_id = $1)",
        never_valid,
    )
    await db_conn.execute("UPDATE token_prices SET price_ts = $1", opened - 30 * SECOND)
    # The store answers the history before a version, newest first; none before a first.
    store = PgStore(db_conn)
    ids = [v["id"] for v in await _versions(db_conn, kept)]
    assert await store.earlier_versions([ids[-1]], 50) == {ids[-1]: ids[-2::-1]}
    assert await store.earlier_versions([ids[-1]], 1) == {ids[-1]: [ids[-2]]}
    [only] = await _versions(db_conn, never_valid)
    assert await store.earlier_versions([only["id"]], 50) == {}
    ticks = [
        PriceTick(SOL_MINT, Decimal(100), opened - 20 * SECOND),
        PriceTick(TOKEN_A, Decimal("1.05"), opened + 62 * 60 * SECOND),
    ]
    async with db_conn.transaction():
        outcomes = await handle_prices(store, ticks, configs=ConfigTexts(),
                                       trading=Settings().trading)  # fmt: skip
    assert [o.closes for o in outcomes] == [{}, {"stale_trade": 1}]
    still_open = await db_conn.fetch("SELECT agent_id FROM agent_positions")
    assert [r["agent_id"] for r in still_open] == [kept]
