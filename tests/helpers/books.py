"""Users, agents and what is published for them: accounts, prices, signals, ticks."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg

from worker.db import accounts
from worker.domain.models import SOL_MINT

# Valid base58 mint addresses for tests (not real tokens).
TOKEN_A = "7GCihgDB8fe6KNjn2MYtkzZcRjQy3t9GHdC8uHYmW2hr"


TOKEN_B = "DezXAZ8z7PnrnRJjz3wXBoRgixCa6xjnB7YaB1pPB263"


TOKEN_C = "EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v"


# When `make_account`'s agents are created: before any signal of any test.
LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)


BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


@dataclass
class Account:
    """A user and its funded simulation agents."""

    user_id: uuid.UUID
    agents: list[accounts.FundedAgent] = field(default_factory=list)


async def make_account(
    conn: asyncpg.Connection,
    configs: Sequence[dict[str, Any] | None] = (None,),
    *,
    deposit_sol: Decimal = Decimal(10),
    deposits: Sequence[Decimal] | None = None,
    created_at: datetime | None = LONG_AGO,
    **agent_kwargs: Any,
) -> Account:
    """A user with one funded simulation agent per config, created at `created_at`.

    An agent is decided only for signals made from its creation on, and tests date their
    signals freely (fixed times, hours ago): so the agents are made long before, unless
    `created_at` says otherwise (None: the database's `now()`)."""
    user_id = await accounts.create_user(conn, f"u{uuid.uuid4().hex[:12]}@test.local")
    account = Account(user_id)
    for i, config in enumerate(configs):
        amount = deposits[i] if deposits is not None else deposit_sol
        agent = await accounts.create_funded_agent(
            conn,
            user_id,
            f"agent {i}",
            deposit_sol=amount,
            trading_config=config,
            **agent_kwargs,
        )
        if created_at is not None:
            await conn.execute(
                "UPDATE agents SET created_at = $2 WHERE id = $1", agent.agent_id, created_at
            )
        account.agents.append(agent)
    return account


async def set_price(conn: asyncpg.Connection, token: str, price_usd: Decimal | str) -> None:
    """Store a latest price directly (as a processed tick would)."""
    await conn.execute(
        "INSERT INTO token_prices (token_address, price_usd, price_ts) VALUES ($1, $2, now()) "
        "ON CONFLICT (token_address) DO UPDATE SET price_usd = $2, price_ts = now()",
        token,
        Decimal(price_usd),
    )


async def set_sol_price(conn: asyncpg.Connection, price_usd: Decimal | str = "100") -> None:
    """Store the SOL/USD price."""
    await set_price(conn, SOL_MINT, price_usd)


def signal_message(user_id: uuid.UUID, token: str = TOKEN_A, **fields: Any) -> dict[str, Any]:
    """A valid signal message; `fields` override or add."""
    message: dict[str, Any] = {
        "user_id": str(user_id),
        "token_address": token,
        "signal_type": "Velocity (Dex Boost Detection)",
        "signal_strength": 4,
        "price_usd": "0.5",
    }
    message.update(fields)
    return message


def mint(rng: random.Random) -> str:
    """A valid (made-up) Solana mint address: 44 base58 characters."""
    return "".join(rng.choice(BASE58) for _ in range(44))


@dataclass
class Book:
    """Users with their agents, and the signals published for them."""

    accounts: list[Account]
    expected: dict[tuple[uuid.UUID, str], list[uuid.UUID]] = field(default_factory=dict)

    def agents_of(self, account: Account) -> list[uuid.UUID]:
        """The agent ids of one account."""
        return [a.agent_id for a in account.agents]

    def signals(
        self, per_user: int, tokens: Sequence[str], *, start: int = 0, keyed: bool = True
    ) -> list[dict[str, Any]]:
        """`per_user` signals for each user, round robin; each remembered as expected.

        Every fourth one carries no price (the token's price then comes from the ticks).
        With `keyed=False` they carry no idempotency key (so the key is the record's
        coordinates, and `expected` is left to the caller).
        """
        out: list[dict[str, Any]] = []
        for i in range(start, start + per_user):
            for u, account in enumerate(self.accounts):
                message: dict[str, Any] = {
                    "user_id": str(account.user_id),
                    "token_address": tokens[(i * 7 + u) % len(tokens)],
                    "signal_type": "Velocity (Dex Boost Detection)",
                    "signal_strength": 1 + (i + u) % 5,
                    "symbol": f"T{(i * 7 + u) % len(tokens)}",
                }
                if i % 4:
                    message["price_usd"] = str(Decimal(1 + (i * 13 + u) % 97) / 100)
                if keyed:
                    key = f"fault-{i}"
                    message["idempotency_key"] = key
                    self.expected[(account.user_id, key)] = self.agents_of(account)
                out.append(message)
        return out


async def make_book(
    conn: asyncpg.Connection, users: int, agents: int, deposit_sol: Decimal = Decimal(10)
) -> Book:
    """`users` users with `agents` funded simulation agents each, and a SOL price."""
    await set_sol_price(conn, "100")
    return Book(
        [await make_account(conn, [None] * agents, deposit_sol=deposit_sol) for _ in range(users)]
    )


@dataclass(frozen=True)
class Tick:
    """A price tick as published."""

    token_address: str
    price_usd: Decimal
    ts: datetime

    def message(self) -> dict[str, Any]:
        """The JSON of contract section 4."""
        return {
            "token_address": self.token_address,
            "price_usd": str(self.price_usd),
            "ts": self.ts.isoformat(),
        }


def ticks(rng: random.Random, tokens: Sequence[str], n: int) -> list[Tick]:
    """`n` ticks over the tokens and SOL, timestamps strictly increasing from now on."""
    start = datetime.now(UTC) + timedelta(seconds=1)
    out = []
    for i in range(n):
        token = SOL_MINT if i % 5 == 0 else rng.choice(tokens)
        low, high = (50, 150) if token == SOL_MINT else (1, 200)
        price = Decimal(rng.randrange(low * 100, high * 100)) / 100
        out.append(Tick(token, price, start + timedelta(milliseconds=i)))
    return out


def latest_prices(published: Iterable[Tick]) -> dict[str, Decimal]:
    """The price each token must end with: its newest tick's."""
    newest: dict[str, Tick] = {}
    for t in published:
        if t.token_address not in newest or t.ts > newest[t.token_address].ts:
            newest[t.token_address] = t
    return {token: t.price_usd for token, t in newest.items()}
