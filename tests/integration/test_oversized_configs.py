"""Issue 20, item 5: a stored config of megabytes, on the real database. The query never
sends it (the agent row carries its size instead), that agent's execution fails with the
reason, the user's other agents trade, its open position keeps the exit rules it was opened
with, and `agents lint` reports it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from tests.helpers.books import TOKEN_A, TOKEN_B, make_account, set_sol_price
from tests.helpers.cli import run_cli
from tests.helpers.kafka import Topics
from tests.helpers.services import Services
from tests.helpers.workers import worker_env
from worker.db.store import PgStore
from worker.domain.config_reading import OversizedConfig
from worker.domain.models import ExecutionStatus, PriceTick, Signal
from worker.handlers.config_cache import ConfigTexts
from worker.handlers.signals import SignalOutcome, handle_signals
from worker.handlers.ticks import handle_prices
from worker.settings import Settings

pytestmark = pytest.mark.integration

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
FIXED: dict[str, Any] = {
    "positionCalculator": {"randomization": {"enabled": False}},
    "stopLoss": {"defaultPercentage": -10},
}
NOTES = 2_000_000  # 2 MB: far over the default 64 KiB cap, quick to store
GROW = (
    "UPDATE agents SET trading_config = trading_config "
    "|| jsonb_build_object('notes', repeat('x', $2)) WHERE id = $1"
)


def _signal(user_id: Any, token: str, key: str, at: datetime) -> Signal:
    return Signal(
        user_id=user_id,
        token_address=token,
        signal_type="Velocity (Dex Boost Detection)",
        signal_strength=4,
        idempotency_key=key,
        created_at=at,
        price_usd=Decimal(1),
    )


async def test_an_oversized_config_fails_its_agent_and_never_leaves_the_database(
    db_conn: asyncpg.Connection, services: Services, topics: Topics, db_url: str
) -> None:
    await set_sol_price(db_conn, "100")
    account = await make_account(db_conn, [FIXED, FIXED, FIXED])
    big = account.agents[1].agent_id
    settings = Settings()
    store = PgStore(db_conn)
    # Agent 1 buys A with its -10% stop; then its config grows to 2 MB.
    async with db_conn.transaction():
        await handle_signals(
            store, [_signal(account.user_id, TOKEN_A, "a", NOW)], trading=settings.trading
        )
    await db_conn.execute(GROW, big, NOTES)
    size = await db_conn.fetchval(
        "SELECT octet_length(trading_config::text) FROM agents WHERE id = $1", big
    )
    assert size > NOTES

    # The fan-out's read carries the size, not the text.
    agents = await store.fetch_agents([account.user_id], [TOKEN_B], 65_536)
    configs = {a.agent_id: a.trading_config_text for a in agents[account.user_id]}
    assert configs[big] == OversizedConfig(size, 65_536)
    assert all(isinstance(t, str) and len(t) < 1000 for a, t in configs.items() if a != big)

    # A signal after the edit (the trigger dated it by the clock) is decided with it.
    edited = await db_conn.fetchval(
        "SELECT max(valid_from) FROM agent_config_history WHERE agent_id = $1", big
    )
    later = edited + timedelta(seconds=1)
    async with db_conn.transaction():
        [outcome] = await handle_signals(
            store,
            [_signal(account.user_id, TOKEN_B, "b", later)],
            trading=settings.trading,
        )
    assert isinstance(outcome, SignalOutcome)
    decisions = {a.agent_id: a.decision for a in outcome.outcomes}
    failed = decisions.pop(big)
    assert failed.status is ExecutionStatus.FAILED
    assert failed.reason == (
        f"invalid trading_config: the stored config is {size:,} bytes, over the 65,536-byte "
        "cap (AGENT_CONFIG_MAX_BYTES)"
    )
    assert [d.status for d in decisions.values()] == [ExecutionStatus.SUCCESS] * 2
    stored = await db_conn.fetchrow(
        "SELECT status, error FROM signal_executions WHERE agent_id = $1 AND signal_id = $2",
        big,
        outcome.signal_id,
    )
    assert stored is not None
    assert (stored["status"], stored["error"]) == ("failed", failed.reason)

    # Its position in A keeps the -10% stop it was opened with (the default is -32%).
    ts = later + timedelta(seconds=1)
    tick = PriceTick(TOKEN_A, Decimal("0.85"), ts)
    async with db_conn.transaction():
        [moved] = await handle_prices(
            store, [tick], configs=ConfigTexts(), trading=settings.trading
        )
    assert moved.closes == {"stop_loss": 3}  # the big agent's too: at -32% it would stay
    assert [p.agent_id for p in moved.config_problems] == [big]

    lint = await run_cli(worker_env(services, db_url, topics), "agents", "lint")
    assert lint.code == 1, lint.stdout
    assert f"agent {big} (agent 1, user {account.user_id}): invalid: {failed.reason}" in (
        lint.stdout
    )
