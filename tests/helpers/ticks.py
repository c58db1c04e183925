"""The tick planner's unit tests share one position, one clock and one way to plan a tick."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from worker.domain.config import AgentTradingConfig, resolve_config
from worker.domain.fills import Fees
from worker.domain.models import PositionState
from worker.domain.ticks import TickPlan, plan_tick

NOW = datetime(2026, 11, 26, 12, tzinfo=UTC)
FEES = Fees(Decimal("0.000005"), Decimal(0))
SOL_USD = Decimal(100)
AVG = Decimal("0.01")  # SOL per token: 1 USD with SOL at 100


def position(**overrides: Any) -> PositionState:
    """200 tokens at 0.01 SOL (1 USD with SOL at 100), bought for 2.000005 SOL 5 minutes
    before `NOW`, the stop at the default -32%, peak and low at the purchase price."""
    fields: dict[str, Any] = {
        "purchase_price": AVG,
        "purchase_amount": Decimal(200),
        "total_invested_sol": Decimal("2.000005"),
        "created_at": NOW - timedelta(minutes=5),
        "current_stop_loss_percentage": Decimal(-32),
        "peak_price": AVG,
        "lowest_price": AVG,
    }
    fields.update(overrides)
    return PositionState(**fields)


def plan_at(
    pos: PositionState,
    token_usd: Decimal,
    cfg: AgentTradingConfig | dict[str, Any] | None = None,
    *,
    now: datetime = NOW,
    balance: Decimal = Decimal(10),
    sol_usd: Decimal = SOL_USD,
) -> TickPlan:
    """`plan_tick` of `pos` at `token_usd`, with `cfg` (a config, or stored JSON to resolve)."""
    config = cfg if isinstance(cfg, AgentTradingConfig) else resolve_config(cfg)
    return plan_tick(
        pos,
        token_usd=token_usd,
        sol_usd=sol_usd,
        now=now,
        cfg=config,
        sol_balance=balance,
        fees=FEES,
    )
