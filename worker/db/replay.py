"""What `replay` reads from the database: the agents, the recorded signals and ticks of a
time range, and the state at its start (SOL per agent, prices known). Read-only."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from uuid import UUID

import asyncpg

from worker.db.agents import config_columns, stored_config, version_of_row
from worker.domain.config_history import ConfigVersion
from worker.domain.config_reading import DEFAULT_MAX_CONFIG_BYTES
from worker.domain.models import SOL_MINT, PriceTick, Signal
from worker.domain.records import AgentSetup, HandAction, PriceWrite, ReplayHistory

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
       created_at, payload_digest, source_record, event_at
  FROM trading_signals
 WHERE user_id = ANY($1::uuid[])
   AND ($2::timestamptz IS NULL OR coalesce(event_at, created_at) >= $2)
   AND ($3::timestamptz IS NULL OR coalesce(event_at, created_at) < $3)
 ORDER BY coalesce(event_at, created_at), id
"""
SELECT_TICKS = """
SELECT token_address, price_usd, price_ts, event_at
  FROM token_price_history
 WHERE token_address = ANY($1::varchar[])
   AND ($2::timestamptz IS NULL OR coalesce(event_at, price_ts) >= $2)
   AND ($3::timestamptz IS NULL OR coalesce(event_at, price_ts) < $3)
 ORDER BY coalesce(event_at, price_ts), token_address, price_ts
"""
# The last price of each token before the start, by decision time (a tick decided after
# its `ts`, late or after its partition's previous record, is where the worker put it):
# from the history, else the stored latest price when it is older than the start (a price
# set before the history existed, such as seed-demo's placeholder SOL/USD).
SELECT_PRICES_BEFORE = """
SELECT DISTINCT ON (token_address) token_address, price_usd, price_ts
  FROM (SELECT token_address, price_usd, price_ts, coalesce(event_at, price_ts) AS at
          FROM token_price_history
         WHERE token_address = ANY($1::varchar[]) AND coalesce(event_at, price_ts) < $2
        UNION ALL
        SELECT token_address, price_usd, price_ts, price_ts FROM token_prices
         WHERE token_address = ANY($1::varchar[]) AND price_ts < $2
           AND NOT EXISTS (SELECT 1 FROM token_price_history h
                            WHERE h.token_address = token_prices.token_address)) p
 ORDER BY token_address, at DESC, price_ts DESC
"""
# Each wallet's SOL at its own start: the balance now, less the SOL moves recorded after
# the start. Trades (swaps, burns) at the start itself are after it (a replay makes them
# again from the start on); deposits and withdrawals at the start are before it (an agent's
# funding, written with it at its creation, is what it starts with). On a ledger that holds
# its invariants (`check`) this is the sum of the moves before the start, exact to the
# lamport; on one where another writer credited a balance without a transaction, it keeps
# that credit as there since ever.
SELECT_SOL_AT = """
SELECT s.wallet_address,
       coalesce((SELECT b.balance FROM agent_balances b
                  WHERE b.wallet_address = s.wallet_address AND b.token_address = $1), 0)
     - coalesce((SELECT sum(
                     CASE WHEN t.output_mint = $1 AND t.transaction_type IN ('DEPOSIT', 'SWAP')
                          THEN t.output_amount ELSE 0 END
                   - CASE WHEN t.input_mint = $1
                               AND t.transaction_type IN ('SWAP', 'WITHDRAWAL', 'BURN')
                          THEN t.input_amount ELSE 0 END
                   - CASE WHEN t.transaction_type = 'SWAP'
                          THEN coalesce(t.network_fee_sol, 0) + coalesce(t.protocol_fee_sol, 0)
                          ELSE 0 END)
                   FROM agent_transactions t
                  WHERE t.wallet_address = s.wallet_address
                    AND (t.transaction_time > s.start_at
                         OR (t.transaction_time = s.start_at
                             AND t.transaction_type IN ('SWAP', 'BURN')))), 0) AS sol
  FROM unnest($2::varchar[], $3::timestamptz[]) AS s(wallet_address, start_at)
"""
# What users did by hand after each agent's start (`HandAction`): deposits and withdrawals
# of simulation SOL (whoever wrote them: a command, Nexgent's UI, an operator), and the manual
# closes of `close_positions` commands (the tokens each closed), in [start, until).
SELECT_TRANSFERS = """
SELECT t.agent_id, t.transaction_time AS at,
       CASE WHEN t.transaction_type = 'DEPOSIT' THEN t.output_amount ELSE -t.input_amount END
           AS amount
  FROM unnest($1::varchar[], $2::timestamptz[]) AS s(wallet_address, start_at)
  JOIN agent_transactions t ON t.wallet_address = s.wallet_address
 WHERE t.transaction_type IN ('DEPOSIT', 'WITHDRAWAL') AND t.transaction_time > s.start_at
   AND ($3::timestamptz IS NULL OR t.transaction_time < $3)
   AND coalesce(t.output_mint, t.input_mint) = $4
 ORDER BY t.transaction_time, t.id
"""
SELECT_MANUAL_CLOSES = """
SELECT r.agent_id, r.event_at AS at, r.user_id, r.idempotency_key,
       ARRAY(SELECT DISTINCT c->>'token' FROM jsonb_array_elements(r.changes->'closed') c)
           AS tokens
  FROM unnest($1::uuid[], $2::timestamptz[]) AS s(agent_id, start_at)
  JOIN command_results r ON r.agent_id = s.agent_id
 WHERE r.command = 'close_positions' AND r.status = 'applied' AND r.event_at > s.start_at
   AND ($3::timestamptz IS NULL OR r.event_at < $3)
 ORDER BY r.event_at, r.id
"""
# Positions bought before their agent's start and still open at it: not replayed (the
# replay starts flat); counted so that the output can say so.
COUNT_OPEN_AT = """
SELECT count(*)
  FROM unnest($1::varchar[], $3::timestamptz[]) AS s(wallet_address, start_at)
  JOIN agent_transactions t ON t.wallet_address = s.wallet_address
  LEFT JOIN agent_historical_swaps h ON h.position_id = t.position_id
 WHERE t.input_mint = $2 AND t.transaction_type = 'SWAP' AND t.transaction_time < s.start_at
   AND NOT t.is_dca AND (h.id IS NULL OR h.sale_time >= s.start_at)
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
    """The users' stored signals created in [since, until), under their stored ids, each
    with the decision time the worker stored (`at`; None for rows from before schema 0007
    or another writer: their `created_at` is their decision time)."""
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
            at=r["event_at"],
        )
        for r in await conn.fetch(SELECT_SIGNALS, list(users), since, until)
    ]


async def read_ticks(
    conn: asyncpg.Connection,
    tokens: Sequence[str],
    since: datetime | None,
    until: datetime | None,
) -> list[PriceWrite]:
    """The recorded ticks of `tokens` (SOL/USD among them) in [since, until), in time order,
    each with its stored decision time (None before schema 0007: `price_ts` is)."""
    return [
        PriceWrite(r["token_address"], r["price_usd"], r["price_ts"], r["event_at"])
        for r in await conn.fetch(SELECT_TICKS, list(tokens), since, until)
    ]


async def state_at(
    conn: asyncpg.Connection,
    agents: Sequence[AgentSetup],
    tokens: Sequence[str],
    at: datetime,
    starts: dict[UUID, datetime] | None = None,
) -> tuple[dict[UUID, Decimal], dict[str, tuple[Decimal, datetime]], int]:
    """Each agent's SOL at its start (`starts`, else `at`; `SELECT_SOL_AT`), the last
    price of each token before `at`, and how many positions were open at their agent's
    start (which the replay does not carry). Agents without a simulation wallet have no
    SOL (they decide nothing but `failed`)."""
    starts = starts or {}
    walleted = [a for a in agents if a.wallet_address is not None]
    wallets = [a.wallet_address for a in walleted]
    times = [starts.get(a.agent_id, at) for a in walleted]
    by_wallet = {a.wallet_address: a.agent_id for a in walleted}
    sol = {
        by_wallet[r["wallet_address"]]: r["sol"]
        for r in await conn.fetch(SELECT_SOL_AT, SOL_MINT, wallets, times)
    }
    prices = {
        r["token_address"]: (r["price_usd"], r["price_ts"])
        for r in await conn.fetch(SELECT_PRICES_BEFORE, list(tokens), at)
    }
    open_at = int(await conn.fetchval(COUNT_OPEN_AT, wallets, SOL_MINT, times))
    return sol, prices, open_at


def agent_starts(
    agents: Sequence[AgentSetup], signals: Sequence[Signal], since: datetime | None
) -> dict[UUID, datetime]:
    """Where each agent's replay starts: `since` (else its user's first signal in the
    range), or the agent's creation when that is later (it decides nothing before it, and
    its funding comes with it). So no other user's signal, whatever its stamp (1970, or
    years ahead), moves an agent's start or its SOL then; an agent of a user with no signal
    in the range starts at `since`, else at its creation."""
    first: dict[UUID, datetime] = {}
    for s in signals:
        if s.user_id not in first or s.decision_time < first[s.user_id]:
            first[s.user_id] = s.decision_time
    starts = {}
    for a in agents:
        start = since or first.get(a.user_id) or a.created_at
        if start is None:
            continue
        if a.created_at is not None and a.created_at > start:
            start = a.created_at
        starts[a.agent_id] = start
    return starts


def tick_of(p: PriceWrite) -> PriceTick:
    """A recorded tick as the handler takes it: observed at its recorded time and decided
    at its recorded decision time (None: at `ts`)."""
    return PriceTick(p.token_address, p.price_usd, p.ts, p.at)


async def read_history(
    conn: asyncpg.Connection,
    agents: Sequence[AgentSetup],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    given: tuple[list[Signal], list[PriceTick] | None] | None = None,
) -> ReplayHistory | None:
    """The agents' users' recorded signals in [since, until) and the ticks of their tokens
    from the start on (or the `given` signals and ticks, from files, in [since, until); given
    signals without ticks: the recorded ticks), and the state at the start; None when there
    is no signal to replay.

    The range starts at `since`, else at the first signal of the agents' users (ticks
    before it only set the prices known at the start). Each agent starts with its SOL at
    its own start (`agent_starts`: its user's first signal, or its creation when later), so
    one user's signal stamped 1970 moves no other user's agents.
    `worker.replay.engine.record_of` puts them in replay order."""
    users = {a.user_id for a in agents}

    def in_range(at: datetime, begin: datetime | None) -> bool:
        return (begin is None or at >= begin) and (until is None or at < until)

    if given is None:
        signals = await read_signals(conn, sorted(users), since, until)
    else:
        signals = [s for s in given[0] if s.user_id in users and in_range(s.created_at, since)]
    if not signals:
        return None
    begin = since or min(s.decision_time for s in signals)
    tokens = sorted({s.token_address for s in signals} | {SOL_MINT})
    if given is None or given[1] is None:
        ticks = [tick_of(p) for p in await read_ticks(conn, tokens, begin, until)]
    else:
        # A file's ticks before its first signal are the prices known then: all are kept.
        ticks = [t for t in given[1] if in_range(t.ts, since)]
    starts = agent_starts(agents, signals, since)
    sol, prices, open_at = await state_at(conn, agents, tokens, begin, starts)
    actions = await read_actions(conn, agents, starts, until)
    return ReplayHistory(signals, ticks, begin, sol, prices, open_at, actions)


async def read_actions(
    conn: asyncpg.Connection,
    agents: Sequence[AgentSetup],
    starts: dict[UUID, datetime],
    until: datetime | None,
) -> list[HandAction]:
    """The transfers and manual closes after each agent's start (`SELECT_TRANSFERS`)."""
    walleted = [a for a in agents if a.wallet_address is not None and a.agent_id in starts]
    wallets = [a.wallet_address for a in walleted]
    times = [starts[a.agent_id] for a in walleted]
    actions = [
        HandAction(r["at"], r["agent_id"], amount=r["amount"])
        for r in await conn.fetch(SELECT_TRANSFERS, wallets, times, until, SOL_MINT)
    ]
    ids = [a.agent_id for a in walleted]
    actions += [
        HandAction(r["at"], r["agent_id"], user_id=r["user_id"], key=r["idempotency_key"],
                   tokens=tuple(sorted(r["tokens"])))
        for r in await conn.fetch(SELECT_MANUAL_CLOSES, ids, times, until)
    ]  # fmt: skip
    return actions
