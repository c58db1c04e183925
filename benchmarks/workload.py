"""The benchmark's data: funded agents, signals, open positions and price ticks.

Accounts are written set-based in SQL, consistent with the ledger (contract section 5: a
`users` row, `agents` rows in simulation mode, `agent_wallets`, a SOL `agent_balances` row
and its `DEPOSIT` transaction). Open positions are written as a buy writes them, by the
worker's own row builders and writers (`worker.db.trades`): the purchase `SWAP`, the SOL
debit and token credit, the `agent_positions` row, with the numbers of
`worker.domain.fills.buy_fill`, so `signal-worker check` holds on them.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer

from worker.db.store import PgStore
from worker.domain.config import DEFAULT_TRADING_CONFIG, deep_merge, resolve_config
from worker.domain.exits import open_position
from worker.domain.fills import BuyFill, buy_fill
from worker.domain.ids import simulation_wallet_address
from worker.domain.ledger import BalanceDelta, NewPosition, SwapOwner, SwapRow, buy_rows
from worker.domain.models import SOL_MINT, SOL_SYMBOL
from worker.domain.records import PriceWrite
from worker.settings import Settings

SOL_USD = Decimal(150)
TOKEN_USD = Decimal("0.0005")
DEPOSIT_SOL = Decimal(1_000_000)
NETWORK_FEE_SOL: Decimal = Settings.model_fields["sim_network_fee_sol"].default
# Older than any tick: a price set directly is stored on a fresh database, and any tick wins.
PRICE_TS = datetime(2000, 1, 1, tzinfo=UTC)
# Enough room for every buy of the run: no agent reaches its open-position limit.
_ROOM: dict[str, Any] = {"purchaseLimits": {"maxOpenPositions": 1000}}


@dataclass(frozen=True)
class Profile:
    """A kind of agent: its whole stored config (every section, as a UI writes it: 1-2 KB of
    JSON), its trading mode, and what it does with a benchmark signal."""

    name: str
    config: dict[str, Any]
    outcome: str  # the execution status it gets: success, skipped or failed
    trading_mode: str = "simulation"

    @property
    def text(self) -> str:
        """The stored JSON: the overrides merged over every default."""
        return orjson.dumps(
            deep_merge(deep_merge(DEFAULT_TRADING_CONFIG, _ROOM), self.config)
        ).decode()


# Agents as users keep them: four temperaments that buy, and a fifth of the fan-out that
# does not (a minimum score above the signal's, a whitelist without the token, live mode).
STEADY = Profile("steady", {}, "success")
MOMENTUM = Profile(
    "momentum",
    {
        "stopLoss": {"mode": "exponential"},
        "takeProfit": {"enabled": True, "mode": "aggressive"},
        "dca": {"enabled": True, "mode": "aggressive"},
    },
    "success",
)
ZONED = Profile("zoned", {"stopLoss": {"mode": "zones", "defaultPercentage": -20}}, "success")
LADDER = Profile(
    "ladder",
    {
        "stopLoss": {
            "mode": "custom",
            "trailingLevels": [
                {"change": 200, "stopLoss": 150},
                {"change": 100, "stopLoss": 70},
                {"change": 50, "stopLoss": 30},
                {"change": 20, "stopLoss": 5},
            ],
        },
        "takeProfit": {"enabled": True},
        "staleTrade": {"minHoldTimeMinutes": 120},
    },
    "success",
)
PICKY = Profile("picky", {"signals": {"minScore": 5}}, "skipped")
LISTED = Profile(
    "whitelist",
    {"signals": {"tokenFilterMode": "whitelist", "tokenList": ["Listed" + "1" * 38]}},
    "skipped",
)
LIVE = Profile("live", {}, "failed", trading_mode="live")
# By agent index within its user, modulo 20: 16 buy, 3 skip, 1 fails (rule 3: live).
MIX: tuple[Profile, ...] = (
    *(STEADY, MOMENTUM, ZONED, LADDER) * 4,
    PICKY,
    PICKY,
    LISTED,
    LIVE,
)
SIGNAL_TYPE = "Velocity (Dex Boost Detection)"
BENCH_SYMBOL = "BENCH"  # the symbol of every benchmark token
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


@dataclass(frozen=True)
class Agent:
    """A funded agent with a simulation wallet, of a profile."""

    agent_id: uuid.UUID
    wallet: str
    profile: Profile = STEADY


@dataclass(frozen=True)
class User:
    """A user and its agents (the subscribers of its signals)."""

    user_id: uuid.UUID
    agents: list[Agent]

    @property
    def key(self) -> bytes:
        """The Kafka key of its signals: the user id as text."""
        return str(self.user_id).encode()


# ---------------------------------------------------------------------------- accounts

INSERT_USERS = """
INSERT INTO users (id, email)
SELECT u.id, 'bench-' || u.id::text || '@bench.local' FROM unnest($1::uuid[]) AS u(id)
"""
INSERT_AGENTS = """
INSERT INTO agents (id, user_id, name, trading_mode, automated_trading_live, trading_config,
                    created_at)
SELECT a.id, a.user_id, a.name, a.mode, a.mode = 'live', a.config::jsonb,
       coalesce($6::timestamptz, now())
  FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::varchar[], $5::text[])
       AS a(id, user_id, name, mode, config)
"""
INSERT_WALLETS = """
INSERT INTO agent_wallets (wallet_address, agent_id, wallet_type)
SELECT w.wallet, w.agent_id, 'simulation'
  FROM unnest($1::varchar[], $2::uuid[]) AS w(wallet, agent_id)
"""
INSERT_SOL_BALANCES = """
INSERT INTO agent_balances (agent_id, wallet_address, token_address, token_symbol, balance)
SELECT b.agent_id, b.wallet, $3, $4, $5
  FROM unnest($1::uuid[], $2::varchar[]) AS b(agent_id, wallet)
"""
INSERT_DEPOSITS = """
INSERT INTO agent_transactions (agent_id, wallet_address, transaction_type, transaction_value_usd,
                                transaction_time, output_mint, output_symbol, output_amount,
                                output_price)
SELECT d.agent_id, d.wallet, 'DEPOSIT', $3, now(), $4, $5, $6, 1
  FROM unnest($1::uuid[], $2::varchar[]) AS d(agent_id, wallet)
"""


async def create_users(
    conn: asyncpg.Connection,
    users: int,
    agents_per_user: int,
    *,
    profiles: Sequence[Profile] = MIX,
    deposit_sol: Decimal = DEPOSIT_SOL,
    created_at: datetime | None = None,
) -> list[User]:
    """`users` users with `agents_per_user` funded agents each, set-based. Profiles go
    round in order over the agents of all the users, so the mix holds at every fan-out
    (one agent each included). The agents exist from `created_at` (default: now): signals
    older than that are not theirs."""
    created = []
    nth = 0
    for _ in range(users):
        user_id = uuid.uuid4()
        agents = []
        for _ in range(agents_per_user):
            agent_id = uuid.uuid4()
            profile = profiles[nth % len(profiles)]
            nth += 1
            agents.append(Agent(agent_id, simulation_wallet_address(agent_id), profile))
        created.append(User(user_id, agents))
    every = [(u.user_id, a) for u in created for a in u.agents]
    texts = {p.name: p.text for p in profiles}
    async with conn.transaction():
        await conn.execute(INSERT_USERS, [u.user_id for u in created])
        await conn.execute(
            INSERT_AGENTS,
            [a.agent_id for _, a in every],
            [uid for uid, _ in every],
            [f"bench agent {i} ({a.profile.name})" for i, (_, a) in enumerate(every)],
            [a.profile.trading_mode for _, a in every],
            [texts[a.profile.name] for _, a in every],
            created_at,
        )
        wallets = [a.wallet for _, a in every]
        ids = [a.agent_id for _, a in every]
        await conn.execute(INSERT_WALLETS, wallets, ids)
        await conn.execute(INSERT_SOL_BALANCES, ids, wallets, SOL_MINT, SOL_SYMBOL, deposit_sol)
        await conn.execute(
            INSERT_DEPOSITS,
            ids,
            wallets,
            (deposit_sol * SOL_USD).quantize(Decimal("1e-8")),
            SOL_MINT,
            SOL_SYMBOL,
            deposit_sol,
        )
    return created


async def set_price(conn: asyncpg.Connection, token: str, price_usd: Decimal) -> None:
    """Store a latest price directly, as a processed tick would (the worker's upsert at
    `PRICE_TS`: on the benchmark's fresh databases nothing is stored yet, so it is)."""
    await PgStore(conn).upsert_prices([PriceWrite(token, price_usd, PRICE_TS)])


# ---------------------------------------------------------------------------- signals


def base58(number: int, width: int) -> str:
    """`number` in base58, left-padded with '1' (base58's zero) to `width` characters."""
    digits = []
    while number:
        number, digit = divmod(number, 58)
        digits.append(_B58[digit])
    return "".join(reversed(digits)).rjust(width, "1")


class TokenNames:
    """Valid, distinct mint addresses: a random 32-character prefix and a counter."""

    def __init__(self, seed: str) -> None:
        digest = int.from_bytes(hashlib.sha256(seed.encode()).digest(), "big")
        self._prefix = base58(digest, 44)[:32]

    def __call__(self, index: int) -> str:
        """The `index`-th token (40 characters)."""
        return self._prefix + base58(index, 8)


def signal_value(user: User, token: str, key: str) -> bytes:
    """A buy signal for `token` with its own price (so no tick is needed) and key."""
    return orjson.dumps(
        {
            "user_id": str(user.user_id),
            "token_address": token,
            "signal_type": SIGNAL_TYPE,
            "signal_strength": 4,
            "symbol": BENCH_SYMBOL,
            "price_usd": str(TOKEN_USD),
            "source": "benchmark",
            "idempotency_key": key,
        }
    )


def signals_round_robin(
    users: Sequence[User], count: int, tokens: TokenNames, tag: str
) -> list[tuple[bytes, bytes]]:
    """`count` (key, value) signals, user after user, each for a token of its own."""
    return [
        (users[i % len(users)].key, signal_value(users[i % len(users)], tokens(i), f"{tag}-{i}"))
        for i in range(count)
    ]


def tick_value(token: str, price_usd: Decimal, ts: datetime) -> bytes:
    """A price tick."""
    return orjson.dumps({"token_address": token, "price_usd": str(price_usd), "ts": ts.isoformat()})


# ---------------------------------------------------------------------------- publishing


def make_producer(bootstrap: str, *, linger_ms: int) -> Any:  # noqa: ANN401 - aiokafka is untyped
    """A producer like the worker's publishers: acks from all replicas, idempotent."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=linger_ms,
        max_batch_size=1_048_576,
        max_request_size=4_194_304,
    )


def now_ms() -> int:
    """The wall clock in epoch milliseconds (a record's CreateTime)."""
    return int(time.time() * 1000)


# ---------------------------------------------------------------------------- positions


def bench_fill(token_usd: Decimal = TOKEN_USD, size_sol: Decimal = Decimal(1)) -> BuyFill:
    """The buy that opened every benchmark position (as the worker would fill it)."""
    return buy_fill(
        size_sol, token_usd, SOL_USD, network_fee_sol=NETWORK_FEE_SOL, protocol_fee_bps=0
    )


async def open_positions(
    conn: asyncpg.Connection, holdings: Sequence[tuple[Agent, str]], *, now: datetime
) -> BuyFill:
    """Open one position per (agent, token) as a 1-SOL buy at `TOKEN_USD`; returns the fill.

    The rows are the worker's own (`buy_rows`, `open_position`), written by its writers in
    one transaction, as the handler writes a batch's buys.
    """
    fill = bench_fill()
    state = open_position(fill, created_at=now, cfg=resolve_config(orjson.loads(STEADY.text)))
    swaps: list[SwapRow] = []
    deltas: list[BalanceDelta] = []
    positions: list[NewPosition] = []
    for agent, token in holdings:
        tx_id, position_id = uuid.uuid4(), uuid.uuid4()
        holding = SwapOwner(agent.agent_id, agent.wallet, token, BENCH_SYMBOL, None, position_id)
        swap, moves = buy_rows(tx_id, holding, fill, now)
        swaps.append(swap)
        deltas.extend(moves)
        positions.append(
            NewPosition(
                id=position_id,
                agent_id=agent.agent_id,
                wallet_address=agent.wallet,
                token_address=token,
                token_symbol=BENCH_SYMBOL,
                purchase_transaction_id=tx_id,
                state=state,
            )
        )
    async with conn.transaction():
        store = PgStore(conn)
        await store.insert_swaps(swaps)
        await store.apply_balance_deltas(deltas)
        await store.insert_positions(positions)
    return fill
