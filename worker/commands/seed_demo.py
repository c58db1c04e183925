"""`signal-worker seed-demo [--if-empty]`: a demo user with four funded simulation agents."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from worker.db import accounts
from worker.db.pool import connect_migrated
from worker.db.store import PgStore
from worker.domain.models import SOL_MINT
from worker.domain.records import PriceWrite
from worker.settings import Settings

DEMO_EMAIL = "demo@signal-worker.local"
PLACEHOLDER_SOL_USD = Decimal(150)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Four agents of different temperaments; configs are deep-merged over the defaults.
DEMO_AGENTS: list[tuple[str, Decimal, dict[str, Any] | None]] = [
    ("Steady (all defaults)", Decimal(10), None),
    (
        "Momentum (aggressive take profit, exponential trailing stop, DCA)",
        Decimal(25),
        {
            "stopLoss": {"mode": "exponential"},
            "takeProfit": {"enabled": True, "mode": "aggressive"},
            "dca": {"enabled": True, "mode": "aggressive"},
        },
    ),
    (
        "Picky (strength 4+, metric bounds, zoned stop)",
        Decimal(6),
        {
            "signals": {"minScore": 4, "marketCapMin": 100000, "liquidityMin": 20000},
            "stopLoss": {"mode": "zones", "defaultPercentage": -20},
        },
    ),
    (
        "Small wallet (fixed stop, stale-trade exits)",
        Decimal("1.5"),
        {
            "purchaseLimits": {"minimumAgentBalance": 0.2, "maxOpenPositions": 5},
            "staleTrade": {"enabled": True, "minHoldTimeMinutes": 30},
        },
    ),
]


async def run(settings: Settings, args: argparse.Namespace) -> int:
    """Create the demo user and agents unless they exist; print their ids."""
    conn = await connect_migrated(settings.db, timeout_s=settings.startup_timeout_s)
    try:
        async with conn.transaction():
            if getattr(args, "if_empty", False) and await accounts.count_users(conn) > 0:
                print("seed-demo: the database already has users; nothing seeded")
                return 0
            user_id = await accounts.find_user(conn, DEMO_EMAIL)
            created = user_id is None
            if user_id is None:
                user_id = await accounts.create_user(conn, DEMO_EMAIL)
                for name, deposit, config in DEMO_AGENTS:
                    await accounts.create_funded_agent(
                        conn, user_id, name, deposit_sol=deposit, trading_config=config
                    )
            agents = await accounts.agents_of_user(conn, user_id)
            # A buy needs a SOL/USD price. The placeholder is stamped at the epoch, so any
            # real tick (`signal-worker publish-price`, a price feed) replaces it.
            placeholder = PriceWrite(SOL_MINT, PLACEHOLDER_SOL_USD, EPOCH)
            seeded = bool(await PgStore(conn).upsert_prices([placeholder]))
            sol_usd = (await PgStore(conn).fetch_prices([SOL_MINT]))[SOL_MINT]
    finally:
        await conn.close()
    print(f"demo user {user_id} ({DEMO_EMAIL}){'' if created else ' already existed'}")
    for agent in agents:
        print(f"  agent {agent.agent_id}  wallet {agent.wallet_address}  {agent.name}")
    print(
        f"SOL/USD: {sol_usd} USD"
        + (" (a placeholder, replaced by the first price tick for the SOL mint)" if seeded else "")
    )
    print(
        f"publish a signal: signal-worker publish --user-id {user_id} "
        "--token-address <mint> --price-usd 0.5 --signal-strength 4"
    )
    return 0
