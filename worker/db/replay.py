"""What `replay` reads from the database: the agents, the recorded signals and ticks of a
time range, and the state at its start (SOL per agent, prices known). Read-only."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from uuid import UUID

import asyncpg

from worker.db.agents import config_columns, stored_config, version_of_row
from worker.db.ledger import LEDGER_MOVES
from worker.domain.config_history import ConfigVersion
from worker.domain.config_reading import DEFAULT_MAX_CONFIG_BYTES
from worker.domain.models import SOL_MINT, PriceTick, Signal
from worker.domain.records import AgentSetup, PriceWrite, ReplayHistory

# Every agent asked for, with or without a simulation wallet: one without makes only
# failed executions live, and replays them.
SELECT_AGENTS = f"""
SELECT a.id, a.user_id, a.name, a.trading_mode, a.automated_trading_simulation,
       a.automated_trading_live, {config_columns("$3")}, w.wallet_address,
       a.created_at
  FROM agents a
  LEFT JOIN agent_wallets w ON w.agent_id = a.id AND w.wallet_type = 'simulation'
 WHERE ($1::uuid[] IS NULL OR a.id = ANY($1::uuid[]))
   AND ($2::uuid IS NULL OR a.user_id = $2)
 ORDER BY a.user_id, a.created_at, a.name, a.id
"""  # noqa: S608 - constant SQL pieces; values travel as parameters
# The agents' config histories (`worker.domain.config_history`), each in order.
SELECT_HISTORY = f"""
SELECT h.agent_id, h.id AS version_id, h.valid_from, h.trading_mode,
       h.automated_trading_simulation, h.automated_trading_live,
       {config_columns("$2", "h")}, NULL::timestamptz AS created_at
  FROM agent_config_history h
 WHERE h.agent_id = ANY($1::uuid[])
 ORDER BY h.agent_id, h.valid_from, h.id
"""  # noqa: S608 - constant SQL pieces; values travel as parameters
SELECT_SIGNALS = """
SELECT id, user_id, token_address, symbol, signal_type, activation_reason, signal_strength,
       source, idempotency_key, price_usd, market_cap_usd, liquidity_usd, holder_count,
       created_at, payload_digest, source_record
  FROM trading_signals
 WHERE user_id = ANY($1::uuid[])
   AND ($2::timestamptz IS NULL OR created_at >= $2)
   AND ($3::timestamptz IS NULL OR created_at < $3)
 ORDER BY created_at, id
"""
SELECT_TICKS = """
SELECT token_address, price_usd, price_ts
  FROM token_price_history
 WHERE token_address = ANY($1::varchar[])
   AND ($2::timestamptz IS NULL OR price_ts >= $2)
   AND ($3::timestamptz IS NULL OR price_ts < $3)
 ORDER BY price_ts, token_address
"""
# The last price of each token before the start: from the history, else the stored latest
# price when it is older than the start (a price set before the history existed, such as
# seed-demo's placeholder SOL/USD).
SELECT_PRICES_BEFORE = """
SELECT DISTINCT ON (token_address) token_address, price_usd, price_ts
  FROM (SELECT token_address, price_usd, price_ts FROM token_price_history
         WHERE token_address = ANY($1::varchar[]) AND price_ts < $2
        UNION ALL
        SELECT token_address, price_usd, price_ts FROM token_prices
         WHERE token_address = ANY($1::varchar[]) AND price_ts < $2) p
 ORDER BY token_address, price_ts DESC
"""
# Each wallet's SOL at a time: the ledger's SOL moves before it (deposits, withdrawals,
# swaps and their fees), as `check` sums them.
SELECT_SOL_BEFORE = f"""
WITH moves AS ({LEDGER_MOVES})
SELECT wallet_address, sum(amount) AS sol
  FROM moves
 WHERE token = $1 AND wallet_address = ANY($2::varchar[]) AND transaction_time < $3
 GROUP BY wallet_address
"""  # noqa: S608 - constant SQL pieces; values travel as parameters
# Positions bought before the start and still open at it: not replayed (the replay starts
# flat); counted so that the output can say so.
COUNT_OPEN_AT = """
SELECT count(*) FROM agent_transactions t
  LEFT JOIN agent_historical_swaps h ON h.position_id = t.position_id
 WHERE t.wallet_address = ANY($1::varchar[]) AND t.input_mint = $2
   AND t.transaction_type = 'SWAP' AND t.transaction_time < $3 AND NOT t.is_dca
   AND (h.id IS NULL OR h.sale_time >= $3)
"""


async def read_agents(
    conn: asyncpg.Connection,
    agent_ids: Sequence[UUID] | None,
    user_id: UUID | None,
    max_config_bytes: int = DEFAULT_MAX_CONFIG_BYTES,
) -> list[AgentSetup]:
    """The agents asked for (with or without a simulation wallet), their stored configs as
    text and their config histories (an `OversizedConfig` beyond `max_config_bytes`: such
    a version buys nothing in a replay either)."""
    rows = await conn.fetch(
        SELECT_AGENTS,
        list(agent_ids) if agent_ids is not None else None,
        user_id,
        max_config_bytes,
    )
    histories: dict[UUID, list[ConfigVersion]] = {}
    for h in await conn.fetch(SELECT_HISTORY, [r["id"] for r in rows], max_config_bytes):
        histories.setdefault(h["agent_id"], []).append(version_of_row(h, max_config_bytes))
    return [
        AgentSetup(
            user_id=r["user_id"],
            agent_id=r["id"],
            name=r["name"],
            wallet_address=r["wallet_address"],
            config_text=stored_config(r, max_config_bytes),
            trading_mode=r["trading_mode"],
            automated_trading_simulation=r["automated_trading_simulation"],
            automated_trading_live=r["automated_trading_live"],
            created_at=r["created_at"],
            versions=tuple(histories.get(r["id"], ())),
        )
        for r in rows
    ]


async def read_signals(
    conn: asyncpg.Connection,
    users: Sequence[UUID],
    since: datetime | None,
    until: datetime | None,
) -> list[Signal]:
    """The users' stored signals created in [since, until), under their stored ids."""
    return [
        Signal(
            user_id=r["user_id"],
            token_address=r["token_address"],
            signal_type=r["signal_type"],
            signal_strength=r["signal_strength"],
            idempotency_key=r["idempotency_key"] or f"signal-{r['id']}",
            created_at=r["created_at"],
            symbol=r["symbol"],
            activation_reason=r["activation_reason"],
            source=r["source"],
            price_usd=r["price_usd"],
            market_cap_usd=r["market_cap_usd"],
            liquidity_usd=r["liquidity_usd"],
            holder_count=r["holder_count"],
            id=r["id"],
            digest=r["payload_digest"],
            record=r["source_record"],
        )
        for r in await conn.fetch(SELECT_SIGNALS, list(users), since, until)
    ]


async def read_ticks(
    conn: asyncpg.Connection,
    tokens: Sequence[str],
    since: datetime | None,
    until: datetime | None,
) -> list[PriceWrite]:
    """The recorded ticks of `tokens` (SOL/USD among them) in [since, until), in time order."""
    return [
        PriceWrite(r["token_address"], r["price_usd"], r["price_ts"])
        for r in await conn.fetch(SELECT_TICKS, list(tokens), since, until)
    ]


async def state_at(
    conn: asyncpg.Connection, agents: Sequence[AgentSetup], tokens: Sequence[str], at: datetime
) -> tuple[dict[UUID, Decimal], dict[str, tuple[Decimal, datetime]], int]:
    """At `at`: each agent's SOL, the last price of each token, and how many positions
    were open (which the replay does not carry)."""
    wallets = {a.wallet_address: a.agent_id for a in agents if a.wallet_address is not None}
    sol = {
        wallets[r["wallet_address"]]: r["sol"]
        for r in await conn.fetch(SELECT_SOL_BEFORE, SOL_MINT, list(wallets), at)
    }
    prices = {
        r["token_address"]: (r["price_usd"], r["price_ts"])
        for r in await conn.fetch(SELECT_PRICES_BEFORE, list(tokens), at)
    }
    open_at = int(await conn.fetchval(COUNT_OPEN_AT, list(wallets), SOL_MINT, at))
    return sol, prices, open_at


def tick_of(p: PriceWrite) -> PriceTick:
    """A recorded tick as the handler takes it: observed at its recorded time."""
    return PriceTick(p.token_address, p.price_usd, p.ts)


async def read_history(
    conn: asyncpg.Connection,
    agents: Sequence[AgentSetup],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    given: tuple[list[Signal], list[PriceTick]] | None = None,
) -> ReplayHistory | None:
    """The agents' users' recorded signals and the ticks of their tokens in [since, until)
    (or the `given` signals and ticks, from files, in that range), and the state at the
    start: `since`, else the first signal (earlier ticks only set prices); None when there is
    no signal to replay. `worker.replay.engine.record_of` puts them in replay order."""
    users = {a.user_id for a in agents}

    def in_range(at: datetime) -> bool:
        return (since is None or at >= since) and (until is None or at < until)

    if given is None:
        signals = await read_signals(conn, sorted(users), since, until)
        tokens = sorted({s.token_address for s in signals} | {SOL_MINT})
        ticks = [tick_of(p) for p in await read_ticks(conn, tokens, since, until)]
    else:
        signals = [s for s in given[0] if s.user_id in users and in_range(s.created_at)]
        tokens = sorted({s.token_address for s in signals} | {SOL_MINT})
        ticks = [t for t in given[1] if in_range(t.ts)]
    if not signals:
        return None
    begin = since or min(s.created_at for s in signals)
    sol, prices, open_at = await state_at(conn, agents, tokens, begin)
    return ReplayHistory(signals, ticks, begin, sol, prices, open_at)
