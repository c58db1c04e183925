"""Where `replay` starts without --from, and each agent's SOL there (real PostgreSQL).

Each agent starts at its own user's first signal of the range (or its creation, when
later) with the SOL the ledger says it had then: another user's signal stamped 1970, or
far ahead, moves nobody's start; an agent made after its user's first signal starts with
its funding; the starting SOL is exact to the lamport against the ledger's rows."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from uuid import UUID, uuid4

import asyncpg
import pytest

from tests.helpers.books import TOKEN_A, TOKEN_B, make_account
from tests.helpers.cli import run_cli
from tests.helpers.kafka import Topics
from tests.helpers.services import Services
from tests.helpers.workers import worker_env
from worker.db import accounts
from worker.db.replay import read_agents, read_history
from worker.domain.models import SOL_MINT

pytestmark = pytest.mark.integration

T0 = datetime(2025, 1, 1, tzinfo=UTC)  # the first agents are funded
T1 = datetime(2025, 2, 1, tzinfo=UTC)  # their user's first signal
T2 = datetime(2025, 3, 1, tzinfo=UTC)  # a later agent is created and funded
T3 = datetime(2025, 4, 1, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
FAR = datetime(9999, 12, 1, tzinfo=UTC)


async def _signal(
    conn: asyncpg.Connection, user_id: UUID, at: datetime, token: str = TOKEN_A
) -> int:
    signal_id: int = await conn.fetchval(
        "INSERT INTO trading_signals (user_id, token_address, signal_type, signal_strength, "
        "idempotency_key, price_usd, created_at) VALUES ($1, $2, 'test', 3, $3, 1, $4) "
        "RETURNING id",
        user_id, token, f"k-{uuid4().hex}", at,
    )  # fmt: skip
    return signal_id


async def _funded_at(conn: asyncpg.Connection, agent_id: UUID, at: datetime) -> None:
    """The agent made, and its deposit written, at `at`."""
    await conn.execute("UPDATE agents SET created_at = $2 WHERE id = $1", agent_id, at)
    await conn.execute(
        "UPDATE agent_transactions SET transaction_time = $2 "
        "WHERE agent_id = $1 AND transaction_type = 'DEPOSIT'",
        agent_id, at,
    )  # fmt: skip


async def _swap(
    conn: asyncpg.Connection, agent: accounts.FundedAgent, at: datetime, *, sol_in: Decimal,
    fees: tuple[Decimal, Decimal], signal_id: int | None = None,
) -> None:  # fmt: skip
    """A buy as the worker writes it: the swap row and both balances."""
    network, protocol = fees
    await conn.execute(
        "INSERT INTO agent_transactions (agent_id, wallet_address, transaction_type, "
        "transaction_value_usd, transaction_time, signal_id, input_mint, input_amount, "
        "output_mint, output_amount, network_fee_sol, protocol_fee_sol) "
        "VALUES ($1, $2, 'SWAP', 0, $3, $4, $5, $6, $7, 5, $8, $9)",
        agent.agent_id, agent.wallet_address, at, signal_id, SOL_MINT, sol_in, TOKEN_B,
        network, protocol,
    )  # fmt: skip
    await conn.execute(
        "UPDATE agent_balances SET balance = balance - $3 "
        "WHERE wallet_address = $1 AND token_address = $2",
        agent.wallet_address, SOL_MINT, sol_in + network + protocol,
    )  # fmt: skip


async def _starting_sol(
    conn: asyncpg.Connection, since: datetime | None = None
) -> dict[UUID, Decimal]:
    agents = await read_agents(conn, None, None)
    history = await read_history(conn, agents, since=since)
    assert history is not None
    return history.sol


async def test_another_users_signal_stamped_1970_or_far_ahead_moves_no_starting_sol(
    db_conn: asyncpg.Connection,
) -> None:
    honest = await make_account(db_conn, deposit_sol=Decimal("12.5"))
    hostile = await make_account(db_conn, deposit_sol=Decimal(3))
    await _funded_at(db_conn, honest.agents[0].agent_id, T0)
    await _funded_at(db_conn, hostile.agents[0].agent_id, T0)
    await _signal(db_conn, honest.user_id, T1)
    await _signal(db_conn, hostile.user_id, EPOCH)
    await _signal(db_conn, hostile.user_id, FAR)

    sol = await _starting_sol(db_conn)

    assert sol[honest.agents[0].agent_id] == Decimal("12.5")
    # The hostile user's own agent was made after its 1970 signal: it starts at its creation.
    assert sol[hostile.agents[0].agent_id] == Decimal(3)


async def test_an_agent_made_after_its_users_first_signal_starts_with_its_funding(
    db_conn: asyncpg.Connection,
) -> None:
    account = await make_account(db_conn, deposit_sol=Decimal(10))
    await _funded_at(db_conn, account.agents[0].agent_id, T0)
    await _signal(db_conn, account.user_id, T1)
    fresh = await accounts.create_funded_agent(
        db_conn, account.user_id, "fresh", deposit_sol=Decimal("4.2")
    )
    await _funded_at(db_conn, fresh.agent_id, T2)  # created and funded in one instant
    await _signal(db_conn, account.user_id, T3)

    sol = await _starting_sol(db_conn)

    assert sol == {account.agents[0].agent_id: Decimal(10), fresh.agent_id: Decimal("4.2")}


async def test_starting_sol_is_the_ledger_at_the_start_to_the_lamport(
    db_conn: asyncpg.Connection,
) -> None:
    account = await make_account(db_conn, deposit_sol=Decimal("7.000000001"))
    agent = account.agents[0]
    await _funded_at(db_conn, agent.agent_id, T0)
    first = await _signal(db_conn, account.user_id, T1)
    fees = (Decimal("0.000005"), Decimal("0.00123457"))
    await _swap(db_conn, agent, T1, sol_in=Decimal("1.234567891"), fees=fees, signal_id=first)
    # At the start itself: a top-up counts as before it, a trade as after it (replayed).
    await accounts.deposit(db_conn, agent.agent_id, agent.wallet_address, Decimal("0.5"))
    await db_conn.execute(
        "UPDATE agent_transactions SET transaction_time = $1 WHERE transaction_time > $2 "
        "AND transaction_type = 'DEPOSIT'",
        T2, T1,
    )  # fmt: skip
    at_start = await _signal(db_conn, account.user_id, T2)
    await _swap(db_conn, agent, T2, sol_in=Decimal("2.000000001"), fees=fees, signal_id=at_start)
    await _swap(db_conn, agent, T3, sol_in=Decimal("0.1"), fees=fees)

    sol = await _starting_sol(db_conn, since=T2)

    expected = Decimal("7.000000001") - Decimal("1.234567891") - sum(fees) + Decimal("0.5")
    assert sol == {agent.agent_id: expected}
    assert await _starting_sol(db_conn) == {agent.agent_id: Decimal("7.000000001")}
    later = datetime(2025, 5, 1, tzinfo=UTC)
    await _signal(db_conn, account.user_id, later)
    assert await _starting_sol(db_conn, since=later) == {
        agent.agent_id: expected - Decimal("2.100000001") - 2 * sum(fees)
    }


async def test_replay_without_from_shows_each_agent_its_own_starting_sol(
    services: Services, db_url: str, topics: Topics, db_conn: asyncpg.Connection
) -> None:
    honest = await make_account(db_conn, deposit_sol=Decimal("12.5"))
    hostile = await make_account(db_conn, deposit_sol=Decimal(3))
    await _funded_at(db_conn, honest.agents[0].agent_id, T0)
    await _funded_at(db_conn, hostile.agents[0].agent_id, T0)
    await _signal(db_conn, honest.user_id, T1)
    await _signal(db_conn, hostile.user_id, EPOCH)
    run = await run_cli(
        worker_env(services, db_url, topics), "replay",
        "--format", "json",
    )  # fmt: skip
    assert run.code == 0, run.stderr
    replayed = {
        (row["label"], row["agent_id"]): row["balance_sol"] for row in json.loads(run.stdout)
    }
    # No price was ever known: each signal fails for its agents, whose SOL stays as funded.
    assert replayed[("stored config", str(honest.agents[0].agent_id))] == "12.5"
    assert replayed[("stored config", str(hostile.agents[0].agent_id))] == "3"
