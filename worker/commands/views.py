"""`signal-worker positions list` and `trades list`: open positions and closed trades, per
agent, as a table, JSON or CSV; filtered by user, agent, token and time. Read-only.

Positions (`positions list`), per open position:
- entry: the average purchase price (SOL per token, DCA buys and their fees included, as
  stored); the SOL it cost (`invested_sol`) and the tokens still held;
- the token's latest price (USD as stored and in SOL at the latest SOL/USD), its time and
  its age. The age is the wall clock now minus that time: for display only, nothing here
  decides anything by it (the worker's own decisions use record times only);
- unrealised P/L at that price, as `report` counts it (`worker.domain.results.
  holding_pnl_sol`): the held tokens valued at the latest price before the fees a sale
  would pay, plus the SOL the position's take-profit sales returned, minus what it cost
  (fees of its buys included); % of that cost. `-` without a price (or without SOL/USD);
- the stop loss in force: the percentage and price (SOL per token) the next tick tests
  before any new peak (`worker.domain.exits.evaluate_stop_loss` at the stored peak: the
  stored stop, raised by the config's trailing for that peak should the config have
  changed); `off` when the config disables stop loss;
- the next take-profit level not yet hit (`pending_take_profit_levels`): its gain target,
  what it sells (% of the tokens bought) and its price; `-` when none is left or take
  profit is off;
- the rules are those the worker's exits use (`worker.domain.exit_rules.exit_config`): the
  agent's current config while valid, else the rules the position was opened with, else
  the agent's last valid config, else the defaults (`rules` says which). `exits` says
  whether ticks exit the position at all: `auto`, or `paused` (automated simulation
  trading off), or `not simulated` (a position in a live wallet, which this worker does
  not trade).
--since/--until select positions by their opening time.

Trades (`trades list`), per full exit (`agent_historical_swaps`; partial take-profit sales
are not rows of their own there but transactions of the position: `tp_sales` counts those
before the exit, and their SOL is in the exit's P/L): entry and exit prices (SOL per token;
the exit price is what the whole position returned net of fees over the tokens bought, as
stored), P/L in SOL, USD and % (of what the position cost), the close reason and the hold
time (sale time - purchase time, both decision times). --since/--until select trades by
their closing time.

Names and symbols are anybody's text: escaped in the table, formula-safe in CSV
(`worker.commands.text`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import orjson

from worker.commands.options import no_agent_message
from worker.commands.report import (
    align,
    duration_text,
    number_text,
    signed_text,
    write_csv,
)
from worker.commands.text import csv_text, printable
from worker.db.pool import connect_migrated
from worker.db.views import PositionRow, TradeRow, ViewFilters, read_positions, read_trades
from worker.domain.config import TakeProfitLevel
from worker.domain.exit_rules import ExitRulesSource, exit_config, last_valid_config
from worker.domain.exits import evaluate_stop_loss, pending_take_profit_levels, price_at_gain
from worker.domain.fills import token_price_sol
from worker.domain.money import fmt, to_sol
from worker.domain.results import Holding, holding_pnl_sol, pct_of
from worker.errors import UsageError
from worker.handlers.config_cache import config_of_rules, config_of_text
from worker.settings import Settings

AGENTS_MATCHING = """
SELECT count(*) FROM agents
 WHERE ($1::uuid[] IS NULL OR id = ANY($1::uuid[])) AND ($2::uuid IS NULL OR user_id = $2)
"""


@dataclass(frozen=True, slots=True)
class PositionView:
    """One line of `positions list` (see the module's docstring)."""

    row: PositionRow
    price_sol: Decimal | None
    age_s: float | None
    pnl_sol: Decimal | None
    pnl_pct: Decimal | None
    stop_loss_pct: Decimal | None  # None: stop loss off
    stop_price_sol: Decimal | None
    next_take_profit: TakeProfitLevel | None
    take_profit_price_sol: Decimal | None
    rules: ExitRulesSource
    exits: str  # auto, paused, not simulated

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: numbers as exact strings, times in RFC 3339, ids as text."""
        r, s, tp = self.row, self.row.state, self.next_take_profit
        return {
            "position_id": str(r.id),
            "user_id": str(r.user_id),
            "agent_id": str(r.agent_id),
            "agent": r.agent_name,
            "token_address": r.token_address,
            "token_symbol": r.token_symbol,
            "opened_at": s.created_at.isoformat(),
            "held_amount": fmt(s.held_amount),
            "entry_price_sol": fmt(s.purchase_price),
            "invested_sol": fmt(s.total_invested_sol),
            "take_profit_returned_sol": fmt(s.take_profit_proceeds_sol),
            "latest_price_usd": _text(r.price_usd),
            "latest_price_sol": _text(self.price_sol),
            "price_at": r.price_at.isoformat() if r.price_at is not None else None,
            "price_age_s": None if self.age_s is None else round(self.age_s, 1),
            "unrealised_pnl_sol": _text(self.pnl_sol),
            "unrealised_pnl_pct": _text(self.pnl_pct),
            "stop_loss_pct": _text(self.stop_loss_pct),
            "stop_loss_price_sol": _text(self.stop_price_sol),
            "take_profit_levels_hit": s.take_profit_levels_hit,
            "next_take_profit_pct": _text(tp.target_percent if tp else None),
            "next_take_profit_sell_pct": _text(tp.sell_percent if tp else None),
            "next_take_profit_price_sol": _text(self.take_profit_price_sol),
            "rules": self.rules.value,
            "exits": self.exits,
        }


def view_position(row: PositionRow, now: datetime) -> PositionView:
    """The figures of one open position (the module's docstring); `now` (the wall clock)
    only for the price's age."""
    s = row.state
    current = config_of_text(row.config).config
    opening = last_valid = None
    if current is None and row.exit_rules is not None:
        opening = config_of_rules(row.exit_rules).config
    if current is None and opening is None:
        last_valid = last_valid_config(config_of_text(text) for text in row.earlier_configs)
    cfg, source = exit_config(current, opening, last_valid)
    price_sol = _price_sol(row.price_usd, row.sol_usd)
    pnl = pct = None
    if price_sol is not None:
        holding = Holding(
            row.token_address, s.held_amount, s.total_invested_sol, s.take_profit_proceeds_sol
        )
        pnl = to_sol(holding_pnl_sol(holding, price_sol))
        pct = pct_of(pnl, s.total_invested_sol)
    stop_pct = stop_price = next_tp = tp_price = None
    if s.purchase_price > 0:  # a row another writer made may hold 0: no levels then
        if cfg.stop_loss.enabled:
            peak = s.peak_price if s.peak_price is not None else s.purchase_price
            outcome = evaluate_stop_loss(s, peak, cfg)
            stop_pct, stop_price = outcome.stop_loss_pct, outcome.stop_price
        pending = pending_take_profit_levels(s, cfg)
        if pending:
            next_tp = pending[0]
            tp_price = price_at_gain(s, next_tp.target_percent)
    if row.wallet_type != "simulation":
        exits = "not simulated"
    else:
        exits = "auto" if row.is_automated else "paused"
    return PositionView(
        row=row,
        price_sol=price_sol,
        age_s=None if row.price_at is None else (now - row.price_at).total_seconds(),
        pnl_sol=pnl,
        pnl_pct=pct,
        stop_loss_pct=stop_pct,
        stop_price_sol=stop_price,
        next_take_profit=next_tp,
        take_profit_price_sol=tp_price,
        rules=source,
        exits=exits,
    )


def _price_sol(price_usd: Decimal | None, sol_usd: Decimal | None) -> Decimal | None:
    if price_usd is None or sol_usd is None or price_usd <= 0 or sol_usd <= 0:
        return None
    return token_price_sol(price_usd, sol_usd)


def trade_dict(t: TradeRow) -> dict[str, Any]:
    """One line of `trades list`, JSON-ready."""
    return {
        "trade_id": str(t.id),
        "position_id": None if t.position_id is None else str(t.position_id),
        "user_id": str(t.user_id),
        "agent_id": str(t.agent_id),
        "agent": t.agent_name,
        "token_address": t.token_address,
        "token_symbol": t.token_symbol,
        "amount": fmt(t.amount),
        "opened_at": t.purchase_time.isoformat(),
        "closed_at": t.sale_time.isoformat(),
        "hold_s": _hold_s(t),
        "entry_price_sol": fmt(t.purchase_price),
        "exit_price_sol": fmt(t.sale_price),
        "invested_sol": fmt(t.invested_sol),
        "pnl_sol": fmt(t.profit_loss_sol),
        "pnl_usd": fmt(t.profit_loss_usd),
        "pnl_pct": fmt(t.change_percent),
        "close_reason": t.close_reason,
        "tp_sales": t.take_profit_sales,
    }


def _hold_s(t: TradeRow) -> float:
    return round((t.sale_time - t.purchase_time).total_seconds(), 1)


def _text(value: Decimal | None) -> str | None:
    return None if value is None else fmt(value)


# Text cells of the CSV (anybody's text): neutralised against formulas; the rest are
# numbers, ids and times, written as they are.
TEXT_FIELDS = frozenset({"agent", "token_address", "token_symbol", "close_reason"})


def render_dicts(rows: Sequence[dict[str, Any]], output: str, fields: Sequence[str]) -> str:
    """JSON (a list) or CSV (a header of `fields`, then a line per row) of the rows."""
    if output == "json":
        return orjson.dumps(list(rows), option=orjson.OPT_INDENT_2).decode()
    cells = [
        [csv_text(d[f]) if f in TEXT_FIELDS and d[f] is not None else d[f] for f in fields]
        for d in rows
    ]
    return write_csv([list(fields), *cells])


# The keys of a position's and a trade's dict, in order: the CSV header (also when empty).
POSITION_FIELDS = (
    "position_id", "user_id", "agent_id", "agent", "token_address", "token_symbol",
    "opened_at", "held_amount", "entry_price_sol", "invested_sol", "take_profit_returned_sol",
    "latest_price_usd", "latest_price_sol", "price_at", "price_age_s", "unrealised_pnl_sol",
    "unrealised_pnl_pct", "stop_loss_pct", "stop_loss_price_sol", "take_profit_levels_hit",
    "next_take_profit_pct", "next_take_profit_sell_pct", "next_take_profit_price_sol",
    "rules", "exits",
)  # fmt: skip
TRADE_FIELDS = (
    "trade_id", "position_id", "user_id", "agent_id", "agent", "token_address",
    "token_symbol", "amount", "opened_at", "closed_at", "hold_s", "entry_price_sol",
    "exit_price_sol", "invested_sol", "pnl_sol", "pnl_usd", "pnl_pct", "close_reason",
    "tp_sales",
)  # fmt: skip
POSITION_COLUMNS = (
    "agent", "token", "opened", "entry SOL", "latest SOL", "age", "P/L SOL", "P/L %",
    "stop %", "stop SOL", "next take profit", "exits",
)  # fmt: skip
TRADE_COLUMNS = (
    "agent", "token", "closed", "held", "entry SOL", "exit SOL", "P/L SOL", "P/L %",
    "reason", "tp sales",
)  # fmt: skip


def render_positions(views: Sequence[PositionView], output: str) -> str:
    """The positions as a table, JSON or CSV."""
    if output != "table":
        return render_dicts([v.as_dict() for v in views], output, POSITION_FIELDS)
    if not views:
        return "no open positions"
    return align([POSITION_COLUMNS, *map(_position_cells, views)], left=3)


def _position_cells(v: PositionView) -> tuple[str, ...]:
    r, tp = v.row, v.next_take_profit
    rules = "" if v.rules is ExitRulesSource.CONFIG else f" ({v.rules.value})"
    take_profit = "-"
    if tp is not None:
        take_profit = (
            f"+{fmt(tp.target_percent)}% sells {fmt(tp.sell_percent)}% "
            f"at {number_text(v.take_profit_price_sol)}"
        )
    return (
        printable(r.agent_name),
        printable(r.token_symbol or r.token_address),
        _time(r.state.created_at),
        fmt(r.state.purchase_price),
        number_text(v.price_sol),
        duration_text(v.age_s),
        signed_text(v.pnl_sol),
        signed_text(v.pnl_pct),
        "off" if v.stop_loss_pct is None else signed_text(v.stop_loss_pct),
        number_text(v.stop_price_sol),
        take_profit,
        v.exits + rules,
    )


def render_trades(trades: Sequence[TradeRow], output: str) -> str:
    """The trades as a table, JSON or CSV."""
    if output != "table":
        return render_dicts([trade_dict(t) for t in trades], output, TRADE_FIELDS)
    if not trades:
        return "no closed trades"
    return align([TRADE_COLUMNS, *map(_trade_cells, trades)], left=3)


def _trade_cells(t: TradeRow) -> tuple[str, ...]:
    return (
        printable(t.agent_name),
        printable(t.token_symbol or t.token_address),
        _time(t.sale_time),
        duration_text(_hold_s(t)),
        fmt(t.purchase_price),
        fmt(t.sale_price),
        signed_text(t.profit_loss_sol),
        signed_text(t.change_percent),
        printable(t.close_reason or "-"),
        str(t.take_profit_sales),
    )


def _time(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


async def run_positions(settings: Settings, args: argparse.Namespace) -> int:
    """`positions list`: print the open positions; 0 (none is not an error), or a usage
    error when --agent / --user match no agent. `positions close` is a command
    (`worker.commands.agent_commands`)."""
    if args.positions_command == "close":
        from worker.commands import agent_commands

        return await agent_commands.run_positions(settings, args)
    filters = _filters(args)
    conn = await connect_migrated(settings.db, timeout_s=settings.startup_timeout_s)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            await _require_agents(conn, args, filters)
            rows = await read_positions(conn, filters, settings.trading.max_config_bytes)
    finally:
        await conn.close()
    now = datetime.now(UTC)  # the prices' age, for display only
    print(render_positions([view_position(r, now) for r in rows], args.format))
    return 0


async def run_trades(settings: Settings, args: argparse.Namespace) -> int:
    """`trades list`: print the closed trades; 0, or a usage error when --agent / --user
    match no agent."""
    filters = _filters(args)
    conn = await connect_migrated(settings.db, timeout_s=settings.startup_timeout_s)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            await _require_agents(conn, args, filters)
            trades = await read_trades(conn, filters)
    finally:
        await conn.close()
    print(render_trades(trades, args.format))
    return 0


def _filters(args: argparse.Namespace) -> ViewFilters:
    if args.since is not None and args.until is not None and args.since >= args.until:
        raise UsageError(
            f"--since {args.since.isoformat()} is not before --until {args.until.isoformat()}"
        )
    return ViewFilters(args.agent, args.user, args.token, args.since, args.until)


async def _require_agents(
    conn: asyncpg.Connection, args: argparse.Namespace, filters: ViewFilters
) -> None:
    """A usage error when --agent / --user name no agent (a typo would else list nothing)."""
    if filters.agent_ids is None and filters.user_id is None:
        return
    ids = list(filters.agent_ids) if filters.agent_ids is not None else None
    if not await conn.fetchval(AGENTS_MATCHING, ids, filters.user_id):
        raise UsageError(no_agent_message(args))
