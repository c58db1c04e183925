"""Rows this worker did not write: what the source system's own API (Nexgent) inserts into
the seed's tables, and configs that nobody validated. Accepted, traded on, reported."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg
import pytest

from tests.helpers.books import TOKEN_A, make_account, set_sol_price
from tests.helpers.cli import run_cli
from tests.helpers.kafka import Topics
from tests.helpers.services import Services
from tests.helpers.workers import worker_env
from worker.db.store import PgStore
from worker.domain.config import DEFAULT_TRADING_CONFIG
from worker.domain.fills import Fees
from worker.domain.models import SOL_MINT, ExecutionStatus, Signal
from worker.handlers.signals import SignalOutcome, handle_signals
from worker.settings import TradingSettings

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)
TRADING = TradingSettings(fees=Fees(Decimal("0.000005"), Decimal(0)))


def nexgent_config() -> str:
    """A config as Nexgent's UI saves it: every section, numbers as JSON numbers, its legacy
    `stopLoss.continuousTrailing`, no `purchaseLimits.maxOpenPositions` (ours)."""
    config = json.loads(json.dumps(DEFAULT_TRADING_CONFIG))
    del config["purchaseLimits"]["maxOpenPositions"]
    config["stopLoss"]["continuousTrailing"] = False
    config["positionCalculator"]["randomization"]["enabled"] = False
    return json.dumps(config)


async def insert_nexgent_account(conn: asyncpg.Connection) -> tuple[uuid.UUID, uuid.UUID]:
    """A user, agent, wallet, SOL balance and deposit written the way Nexgent's API writes
    them: app-generated ids, its own column sets, the balance as a decimal string."""
    user_id, agent_id = uuid.uuid4(), uuid.uuid4()
    wallet = f"sim_{agent_id.hex[:32]}"
    await conn.execute(
        "INSERT INTO users (id, email, password_hash, created_at, failed_login_attempts) "
        "VALUES ($1, $2, 'bcrypt$hash', now(), 0)",
        user_id,
        f"{user_id.hex[:8]}@nexgent.local",
    )
    await conn.execute(
        # Created a year ago: before the signals the test dates (an agent is decided only
        # for signals made from its creation on).
        "INSERT INTO agents (id, user_id, name, trading_mode, trading_config, created_at, "
        "updated_at) VALUES ($1, $2, 'From Nexgent', 'simulation', $3::jsonb, "
        "now() - interval '1 year', now())",
        agent_id,
        user_id,
        nexgent_config(),
    )
    await conn.execute(
        "INSERT INTO agent_wallets (wallet_address, agent_id, wallet_type, created_at, "
        "updated_at) VALUES ($1, $2, 'simulation', now(), now())",
        wallet,
        agent_id,
    )
    await conn.execute(
        "INSERT INTO agent_balances (id, agent_id, wallet_address, token_address, token_symbol, "
        "balance, last_updated) VALUES ($1, $2, $3, $4, 'SOL', '12.5', now())",
        uuid.uuid4(),
        agent_id,
        wallet,
        SOL_MINT,
    )
    await conn.execute(
        "INSERT INTO agent_transactions (id, agent_id, wallet_address, transaction_type, "
        "transaction_value_usd, transaction_time, output_mint, output_symbol, output_amount, "
        "created_at, updated_at) VALUES ($1, $2, $3, 'DEPOSIT', 1250, now(), $4, 'SOL', 12.5, "
        "now(), now())",
        uuid.uuid4(),
        agent_id,
        wallet,
        SOL_MINT,
    )
    return user_id, agent_id


async def test_rows_nexgent_writes_are_accepted_and_its_agent_trades(
    db_conn: asyncpg.Connection, services: Services, topics: Topics, db_url: str
) -> None:
    await set_sol_price(db_conn, "100")
    user_id, agent_id = await insert_nexgent_account(db_conn)
    # Nexgent's POST /api/v1/trading-signals: no idempotency key, no market data.
    await db_conn.execute(
        "INSERT INTO trading_signals (token_address, symbol, signal_type, activation_reason, "
        "signal_strength, source, user_id, created_at, updated_at) "
        "VALUES ($1, 'BONK', 'Velocity (Dex Boost Detection)', NULL, 4, 'api', $2, now(), now())",
        TOKEN_A,
        user_id,
    )
    await db_conn.execute(  # a second one: NULL keys never conflict
        "INSERT INTO trading_signals (token_address, signal_type, signal_strength, user_id, "
        "updated_at) VALUES ($1, 'Velocity (Dormant Explosion)', 2, $2, now())",
        TOKEN_A,
        user_id,
    )

    signal = Signal(
        user_id=user_id,
        token_address=TOKEN_A,
        signal_type="Velocity (Dex Boost Detection)",
        signal_strength=4,
        idempotency_key="from-kafka-1",
        created_at=NOW,
        price_usd=Decimal("0.5"),
    )
    async with db_conn.transaction():
        [outcome] = await handle_signals(PgStore(db_conn), [signal], trading=TRADING)
    assert isinstance(outcome, SignalOutcome)
    [agent] = outcome.outcomes
    assert (agent.agent_id, agent.decision.status) == (agent_id, ExecutionStatus.SUCCESS)
    assert outcome.config_problems == []  # its legacy key is accepted silently

    env = worker_env(services, db_url, topics)
    check = await run_cli(env, "check")
    assert check.code == 0, check.stdout
    lint = await run_cli(env, "agents", "lint")
    assert lint.code == 0, lint.stdout
    assert lint.stdout.splitlines() == [
        f"agent {agent_id} (From Nexgent, user {user_id}): legacy keys (ignored): "
        "stopLoss.continuousTrailing",
        "agents lint: 1 agent(s); 0 with an invalid config, 0 with keys the worker ignores",
    ]


async def test_agents_lint_lists_every_problem_and_fails_on_an_invalid_config(
    db_conn: asyncpg.Connection, services: Services, topics: Topics, db_url: str
) -> None:
    account = await make_account(db_conn, [None] * 4)
    stored = {
        0: '{"purchaseLimits": {"maxPurchasePerToken": 1e400}}',
        1: "[" * 2000 + "]" * 2000,
        2: '{"signals": {"minscore": 3}, "stopLoss": {"continuousTrailing": true}}',
    }
    for i, text in stored.items():
        await db_conn.execute(
            "UPDATE agents SET trading_config = $2::text::jsonb WHERE id = $1",
            account.agents[i].agent_id,
            text,
        )
    env = worker_env(services, db_url, topics)
    lint = await run_cli(env, "agents", "lint")
    assert lint.code == 1
    lines = lint.stdout.splitlines()
    ids = [a.agent_id for a in account.agents]
    assert any(
        line.startswith(f"agent {ids[0]} ")
        and line.endswith(
            "invalid: invalid trading_config: not JSON this worker accepts: a number with 401 "
            "digits is too long (at most 40 digits)"  # jsonb prints a stored 1e400 in full
        )
        for line in lines
    ), lines
    assert any(
        line.startswith(f"agent {ids[1]} ") and line.endswith("nested too deeply") for line in lines
    ), lines
    assert any(
        line.startswith(f"agent {ids[2]} ")
        and line.endswith("unknown keys (ignored): signals.minscore")
        for line in lines
    ), lines
    assert any(
        line.startswith(f"agent {ids[2]} ")
        and line.endswith("legacy keys (ignored): stopLoss.continuousTrailing")
        for line in lines
    ), lines
    assert not any(str(ids[3]) in line for line in lines)
    assert lines[-1] == (
        "agents lint: 4 agent(s); 2 with an invalid config, 1 with keys the worker ignores"
    )
