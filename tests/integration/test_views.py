"""`positions list`, `trades list` and `report`'s tokens without a price, on a real database
with trades made by the live handlers (issue 23, item 3)."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from tests.helpers.books import TOKEN_A, TOKEN_B, TOKEN_C, Account, make_account
from tests.helpers.cli import run_cli
from tests.helpers.kafka import Topics
from tests.helpers.services import Services
from tests.helpers.workers import worker_env
from worker.commands.report import render
from worker.commands.views import (
    POSITION_FIELDS,
    TRADE_FIELDS,
    render_positions,
    render_trades,
    view_position,
)
from worker.db.report import Filters, read_report
from worker.db.store import PgStore
from worker.db.views import ViewFilters, read_positions, read_trades
from worker.domain.models import SOL_MINT, PriceTick, Signal
from worker.handlers.config_cache import ConfigTexts
from worker.handlers.signals import handle_signals
from worker.handlers.ticks import handle_prices
from worker.settings import Settings

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 26, 12, tzinfo=UTC)
NOW = T0 + timedelta(minutes=5)  # the wall clock the views are shown at
MAX_CONFIG_BYTES = Settings().trading.max_config_bytes
FIXED: dict[str, Any] = {"positionCalculator": {"randomization": {"enabled": False}}}
# Agent 0: take profit on (aggressive: +25% sells 25%, +50% sells 25%, ...), stop at -32%.
# Agent 1: no take profit, stop at -10%. Both trail the fixed way (gain - 10 from +20%).
TAKING = {**FIXED, "takeProfit": {"enabled": True, "mode": "aggressive"}}
TIGHT = {**FIXED, "stopLoss": {"defaultPercentage": -10}}


async def _ticks(conn: asyncpg.Connection, *ticks: tuple[str, str, int]) -> None:
    chunk = [
        PriceTick(token, Decimal(price), T0 + timedelta(seconds=s)) for token, price, s in ticks
    ]
    async with conn.transaction():
        await handle_prices(PgStore(conn), chunk, configs=ConfigTexts(), trading=Settings().trading)


async def _buy(conn: asyncpg.Connection, account: Account, token: str, symbol: str, s: int) -> None:
    signal = Signal(user_id=account.user_id, token_address=token, signal_type="Velocity",
                    signal_strength=4, idempotency_key=f"k-{token}", symbol=symbol,
                    created_at=T0 + timedelta(seconds=s), price_usd=Decimal(1))  # fmt: skip
    async with conn.transaction():
        await handle_signals(PgStore(conn), [signal], trading=Settings().trading)


async def _trade(conn: asyncpg.Connection) -> Account:
    """Both agents buy A and B at 1 USD (SOL at 100 USD: 0.01 SOL per token) at +1 s and C
    at +40 s; A rises to 1.3 (agent 0 takes its first profit), B falls to 0.6 (both stop
    out at +30 s, held 29 s); C is never ticked: it has no price."""
    account = await make_account(conn, [TAKING, TIGHT])
    await _ticks(conn, (SOL_MINT, "100", 0))
    await _buy(conn, account, TOKEN_A, "AAA", 1)
    await _buy(conn, account, TOKEN_B, "BBB", 1)
    await _ticks(conn, (TOKEN_A, "1.3", 20), (TOKEN_B, "0.6", 30))
    await _buy(conn, account, TOKEN_C, "CCC", 40)
    return account


async def _positions(conn: asyncpg.Connection, **filters: Any) -> dict[tuple[str, str], Any]:
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        rows = await read_positions(conn, ViewFilters(**filters), MAX_CONFIG_BYTES)
    return {(r.agent_name, r.token_symbol): view_position(r, NOW) for r in rows}


async def test_positions_show_price_pnl_stop_and_next_take_profit_or_no_price(
    db_conn: asyncpg.Connection,
) -> None:
    await _trade(db_conn)
    views = await _positions(db_conn)
    assert sorted(views) == [("agent 0", "AAA"), ("agent 0", "CCC"),
                             ("agent 1", "AAA"), ("agent 1", "CCC")]  # fmt: skip
    stored = {
        (r["name"], r["token_symbol"]): r
        for r in await db_conn.fetch(
            "SELECT a.name, p.* FROM agent_positions p JOIN agents a ON a.id = p.agent_id"
        )
    }
    for key in [("agent 0", "AAA"), ("agent 1", "AAA")]:
        v, row = views[key], stored[key]
        assert v.price_sol == Decimal("0.013")
        assert v.row.price_at == T0 + timedelta(seconds=20)
        assert v.age_s == 280.0  # NOW - the tick's time
        held = row["remaining_amount"] or row["purchase_amount"]
        pnl = held * Decimal("0.013") + row["take_profit_proceeds_sol"] - row["total_invested_sol"]
        assert v.pnl_sol == pnl.quantize(Decimal("1e-8"), rounding="ROUND_DOWN") > 0
        assert v.pnl_pct == (v.pnl_sol * 100 / row["total_invested_sol"]).quantize(Decimal("0.01"))
        # +30% peak: the fixed trail holds the stop at +20% (what the tick stored).
        assert v.stop_loss_pct == row["current_stop_loss_percentage"] == Decimal(20)
        assert v.stop_price_sol == row["purchase_price"] * Decimal("1.2")
        assert (v.rules.value, v.exits) == ("config", "auto")
    taking, tight = views[("agent 0", "AAA")], views[("agent 1", "AAA")]
    assert stored[("agent 0", "AAA")]["take_profit_levels_hit"] == 1  # +25% sold at 1.3
    assert taking.next_take_profit is not None
    assert (taking.next_take_profit.target_percent, taking.next_take_profit.sell_percent) == (
        Decimal(50),
        Decimal(25),
    )
    assert taking.take_profit_price_sol == stored[("agent 0", "AAA")]["purchase_price"] * Decimal(
        "1.5"
    )
    assert tight.next_take_profit is None and tight.take_profit_price_sol is None
    # C was never ticked: no price, so no P/L and no age; its stop is the default.
    for agent, stop in (("agent 0", Decimal(-32)), ("agent 1", Decimal(-10))):
        c = views[(agent, "CCC")]
        assert (c.price_sol, c.age_s, c.pnl_sol, c.pnl_pct) == (None, None, None, None)
        assert c.stop_loss_pct == stop
    table = render_positions(list(views.values()), "table").splitlines()
    assert table[0].split()[:3] == ["agent", "token", "opened"]
    c_line = next(line for line in table if "agent 1" in line and "CCC" in line)
    assert "2026-11-26 12:00:40" in c_line and "  -  " in c_line
    a_line = next(line for line in table if "agent 0" in line and "AAA" in line)
    assert "+50% sells 25% at 0.015" in a_line and a_line.endswith("auto")


async def test_positions_follow_the_rules_the_exits_use_and_the_automation_switch(
    db_conn: asyncpg.Connection,
) -> None:
    account = await _trade(db_conn)
    taking = account.agents[0].agent_id
    # An invalid config: the exits fall back to the rules the position was opened with.
    await db_conn.execute(
        """UPDATE agents SET trading_config = '{"stopLoss": {"mode": "nonsense"}}',
                  automated_trading_simulation = false WHERE id = $1""",
        taking,
    )
    views = await _positions(db_conn, agent_ids=[taking])
    assert sorted(views) == [("agent 0", "AAA"), ("agent 0", "CCC")]
    a = views[("agent 0", "AAA")]
    assert (a.rules.value, a.exits) == ("opening rules", "paused")
    assert a.next_take_profit is not None and a.next_take_profit.target_percent == 50
    line = render_positions([a], "table").splitlines()[1]
    assert line.endswith("paused (opening rules)")
    # The stop-loss switch of a valid config applies now: off.
    await db_conn.execute(
        """UPDATE agents SET trading_config = '{"stopLoss": {"enabled": false}}' WHERE id = $1""",
        taking,
    )
    a = (await _positions(db_conn, agent_ids=[taking]))[("agent 0", "AAA")]
    assert (a.stop_loss_pct, a.stop_price_sol, a.next_take_profit) == (None, None, None)
    assert " off " in render_positions([a], "table").splitlines()[1]


async def test_positions_and_trades_filter_by_user_agent_token_and_time(
    db_conn: asyncpg.Connection,
) -> None:
    account = await _trade(db_conn)
    other = await make_account(db_conn, [FIXED])
    tight = account.agents[1].agent_id
    assert sorted(await _positions(db_conn, agent_ids=[tight])) == [
        ("agent 1", "AAA"),
        ("agent 1", "CCC"),
    ]
    assert sorted(await _positions(db_conn, tokens=["AAA"])) == [
        ("agent 0", "AAA"),
        ("agent 1", "AAA"),
    ]
    assert sorted(await _positions(db_conn, tokens=[TOKEN_C], agent_ids=[tight])) == [
        ("agent 1", "CCC")
    ]
    since = T0 + timedelta(seconds=30)
    assert sorted(await _positions(db_conn, since=since)) == [
        ("agent 0", "CCC"),
        ("agent 1", "CCC"),
    ]
    assert sorted(await _positions(db_conn, until=since)) == [
        ("agent 0", "AAA"),
        ("agent 1", "AAA"),
    ]
    assert await _positions(db_conn, user_id=other.user_id) == {}
    assert len(await _positions(db_conn, user_id=account.user_id)) == 4

    async def trades(**filters: Any) -> list[tuple[str, str]]:
        rows = await read_trades(db_conn, ViewFilters(**filters))
        return [(t.agent_name, t.token_symbol) for t in rows]

    assert sorted(await trades()) == [("agent 0", "BBB"), ("agent 1", "BBB")]
    assert await trades(agent_ids=[tight]) == [("agent 1", "BBB")]
    assert await trades(tokens=["AAA"]) == []
    assert len(await trades(tokens=[TOKEN_B], user_id=account.user_id)) == 2
    closed = T0 + timedelta(seconds=30)
    assert len(await trades(since=closed, until=closed + timedelta(microseconds=1))) == 2
    assert await trades(until=closed) == []
    assert await trades(since=closed + timedelta(microseconds=1)) == []
    assert await trades(user_id=other.user_id) == []


async def test_trades_show_entry_exit_pnl_close_reason_and_hold_time_in_every_format(
    db_conn: asyncpg.Connection,
) -> None:
    await _trade(db_conn)
    trades = await read_trades(db_conn, ViewFilters())
    history = {
        r["name"]: r
        for r in await db_conn.fetch(
            "SELECT a.name, h.* FROM agent_historical_swaps h JOIN agents a ON a.id = h.agent_id"
        )
    }
    parsed = json.loads(render_trades(trades, "json"))
    assert [list(d) for d in parsed] == [list(TRADE_FIELDS)] * 2
    for d in parsed:
        h = history[d["agent"]]
        assert (d["close_reason"], d["hold_s"], d["tp_sales"]) == ("stop_loss", 29.0, 0)
        assert d["closed_at"] == (T0 + timedelta(seconds=30)).isoformat()
        assert Decimal(d["pnl_sol"]) == h["profit_loss_sol"] < 0
        assert Decimal(d["pnl_pct"]) == h["change_percent"]
        assert Decimal(d["entry_price_sol"]) == h["purchase_price"]
        assert Decimal(d["exit_price_sol"]) == h["sale_price"]
        # What the position cost: the buy's SOL debit, fees included.
        assert Decimal(d["invested_sol"]) > h["amount"] * h["purchase_price"]
    rows = list(csv.DictReader(io.StringIO(render_trades(trades, "csv"), newline="")))
    assert [{k: r[k] for k in ("agent", "close_reason", "hold_s")} for r in rows] == [
        {"agent": d["agent"], "close_reason": "stop_loss", "hold_s": "29.0"} for d in parsed
    ]
    assert [r["pnl_sol"] for r in rows] == [d["pnl_sol"] for d in parsed]  # "-0.4..." as is
    table = render_trades(trades, "table").splitlines()
    assert len(table) == 3 and table[0].split()[:4] == ["agent", "token", "closed", "held"]
    assert all("29s" in line and "stop_loss" in line for line in table[1:])
    # Empty: a line in the table, [] in JSON, the header alone in CSV.
    assert render_trades([], "table") == "no closed trades"
    assert json.loads(render_trades([], "json")) == []
    assert render_trades([], "csv") == ",".join(TRADE_FIELDS)
    assert render_positions([], "csv") == ",".join(POSITION_FIELDS)


async def test_report_names_the_held_tokens_without_a_price(db_conn: asyncpg.Connection) -> None:
    account = await _trade(db_conn)
    async with db_conn.transaction(isolation="repeatable_read", readonly=True):
        report = await read_report(db_conn, Filters(user_id=account.user_id))
    rows = [("", r) for r in report.results]
    for r in json.loads(render(rows, "json")):
        assert r["unrealised_pnl_sol"] is None
        assert r["unpriced_tokens"] == [TOKEN_C]
    table = render(rows, "table").splitlines()
    # The results: the header, two agents, the line naming what has no price; then the
    # figures traders compare (`worker.domain.performance`), after a blank line.
    assert table[3] == f"unrealised -: no price for {TOKEN_C} (agent 0, agent 1)"
    assert table[4] == ""
    assert table[5].split()[:3] == ["agent", "max", "drawdown"]
    assert len(table) == 8
    parsed = list(csv.DictReader(io.StringIO(render(rows, "csv"), newline="")))
    assert [r["unpriced_tokens"] for r in parsed] == [TOKEN_C, TOKEN_C]
    assert [r["unrealised_pnl_sol"] for r in parsed] == ["", ""]
    assert list(parsed[0])[:3] == ["agent_id", "name", "executions_success"]
    assert "trades" in parsed[0]  # one value per column
    # Once C has a price, nothing is missing.
    await _ticks(db_conn, (TOKEN_C, "1.1", 50))
    async with db_conn.transaction(isolation="repeatable_read", readonly=True):
        report = await read_report(db_conn, Filters(user_id=account.user_id))
    assert all(r.unpriced_tokens == () and r.unrealised_pnl_sol for r in report.results)
    priced = render([("", r) for r in report.results], "table").splitlines()
    assert len(priced) == 7  # no line naming what has no price: 3, a blank, then 3
    assert not any(line.startswith("unrealised -") for line in priced)


async def test_positions_and_trades_from_the_command_line(
    services: Services, db_url: str, topics: Topics, db_conn: asyncpg.Connection
) -> None:
    account = await _trade(db_conn)
    env = worker_env(services, db_url, topics)
    done = await run_cli(env, "positions", "list", "--user", str(account.user_id),
                         "--token", "AAA", "--format", "csv")  # fmt: skip
    assert done.code == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout, newline="")))
    assert list(rows[0]) == list(POSITION_FIELDS)
    assert [(r["agent"], r["token_symbol"], r["latest_price_sol"]) for r in rows] == [
        ("agent 0", "AAA", "0.013"),
        ("agent 1", "AAA", "0.013"),
    ]
    assert [r["stop_loss_pct"] for r in rows] == ["20", "20"]
    assert [r["next_take_profit_pct"] for r in rows] == ["50", ""]
    assert float(rows[0]["price_age_s"]) > 0  # the wall clock's age: only its sign is known
    done = await run_cli(env, "trades", "list", "--since", "2026-11-26T12:00:30Z",
                         "--format", "json")  # fmt: skip
    assert done.code == 0, done.stderr
    assert [t["close_reason"] for t in json.loads(done.stdout)] == ["stop_loss", "stop_loss"]
    table = await run_cli(env, "trades", "list", "--agent", str(account.agents[1].agent_id))
    assert table.code == 0, table.stderr
    assert len(table.stdout.splitlines()) == 2 and "agent 1" in table.stdout
    missing = "00000000-0000-0000-0000-000000000001"
    refused = await run_cli(env, "positions", "list", "--agent", missing)
    assert refused.code == 2
    assert refused.stderr[-1] == f"signal-worker positions: no agent with the id {missing}"
    backwards = await run_cli(env, "trades", "list", "--since", "2026-11-27", "--until",
                              "2026-11-26")  # fmt: skip
    assert backwards.code == 2
    assert backwards.stderr[-1].startswith("signal-worker trades: --since 2026-11-27T00:00:00")


async def test_a_position_without_rules_shows_its_agents_last_valid_config(
    db_conn: asyncpg.Connection,
) -> None:
    # As the exits do: a position without stored rules of an agent whose config is invalid
    # follows the agent's last valid config (here: stop loss off), not the defaults.
    account = await _trade(db_conn)
    taking = account.agents[0].agent_id
    await db_conn.execute("UPDATE agent_positions SET exit_rules_id = NULL")
    for config in ({**TAKING, "stopLoss": {"enabled": False}}, {"stopLoss": {"mode": "x"}}):
        await db_conn.execute(
            "UPDATE agents SET trading_config = $2::text::jsonb WHERE id = $1",
            taking,
            json.dumps(config),
        )
    a = (await _positions(db_conn, agent_ids=[taking]))[("agent 0", "AAA")]
    assert a.rules.value == "last valid config"
    assert (a.stop_loss_pct, a.stop_price_sol) == (None, None)
    assert a.next_take_profit is not None and a.next_take_profit.target_percent == 50
    # An agent whose every version is invalid: the defaults.
    await db_conn.execute(
        "DELETE FROM agent_config_history WHERE agent_id = $1 AND id < "
        "(SELECT max(id) FROM agent_config_history WHERE agent_id = $1)",
        taking,
    )
    a = (await _positions(db_conn, agent_ids=[taking]))[("agent 0", "AAA")]
    assert (a.rules.value, a.stop_loss_pct) == ("defaults", Decimal(20))  # on: the stored stop
