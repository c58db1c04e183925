"""The per-tick plan: order of stop loss, take profit, stale trade, DCA and lowest price."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from worker.domain.config import resolve_config
from worker.domain.models import CloseReason, PositionState
from worker.domain.ticks import Fees, plan_tick

NOW = datetime(2026, 11, 26, 12, tzinfo=UTC)
FEES = Fees(Decimal("0.000005"), Decimal(0))
SOL_USD = Decimal(100)


def position(**overrides: Any) -> PositionState:
    """200 tokens at 0.01 SOL (1 USD with SOL at 100), bought for 2.000005 SOL."""
    fields: dict[str, Any] = {
        "purchase_price": Decimal("0.01"),
        "purchase_amount": Decimal(200),
        "remaining_amount": Decimal(200),
        "total_invested_sol": Decimal("2.000005"),
        "created_at": NOW - timedelta(minutes=5),
        "current_stop_loss_percentage": Decimal(-32),
        "peak_price": Decimal("0.01"),
        "lowest_price": Decimal("0.01"),
    }
    fields.update(overrides)
    return PositionState(**fields)


def plan(
    pos: PositionState,
    usd: str,
    config: dict[str, Any] | None = None,
    balance: Decimal = Decimal(10),
) -> Any:
    return plan_tick(
        pos,
        token_usd=Decimal(usd),
        sol_usd=SOL_USD,
        now=NOW,
        cfg=resolve_config(config),
        sol_balance=balance,
        fees=FEES,
    )


def test_a_quiet_tick_only_moves_the_lowest_price() -> None:
    result = plan(position(), "0.9")
    assert not result.moves_money
    assert result.final is not None
    assert result.final.lowest_price == Decimal("0.009")
    assert result.final.current_stop_loss_percentage == Decimal(-32)


def test_the_stop_loss_sells_everything_and_ends_the_tick() -> None:
    # 200 tokens at 0.0067 SOL: 1.34 SOL gross, 1.339995 net; P/L against 2.000005.
    result = plan(position(), "0.67", {"dca": {"enabled": True}})
    assert result.final is None
    [sale] = result.sales
    assert sale.close_reason is CloseReason.STOP_LOSS
    assert sale.fill.token_amount == 200
    assert sale.fill.credit_sol == Decimal("1.339995")
    assert sale.pnl is not None
    assert sale.pnl.profit_loss_sol == Decimal("1.339995") - Decimal("2.000005")
    assert result.dca is None  # the tick ended with the sale


def test_take_profit_then_stale_close_in_one_tick() -> None:
    # +60% sells 25% (50 tokens at 0.016 = 0.8 SOL gross); the position is old enough
    # and, at 60% gain, inside a 1..100% stale window: the other 150 tokens go too.
    config = {
        "takeProfit": {"enabled": True},
        "stopLoss": {"enabled": False},
        "staleTrade": {
            "enabled": True,
            "minHoldTimeMinutes": 1,
            "minProfitPercent": 1,
            "maxProfitPercent": 100,
        },
    }
    result = plan(position(), "1.6", config)
    assert [s.fill.token_amount for s in result.sales] == [50, 150]
    assert [s.close_reason for s in result.sales] == [None, CloseReason.STALE_TRADE]
    returned = Decimal("0.8") - FEES.network_fee_sol + Decimal("2.4") - FEES.network_fee_sol
    assert result.sales[-1].pnl is not None
    assert result.sales[-1].pnl.profit_loss_sol == returned - Decimal("2.000005")


def test_dca_is_skipped_when_the_balance_cannot_pay_it() -> None:
    # -20% on the moderate template buys 0.008 x 200 x 75% = 1.2 SOL.
    config = {"dca": {"enabled": True}, "stopLoss": {"enabled": False}}
    poor = plan(position(), "0.8", config, balance=Decimal("1.2"))
    assert poor.dca is None and poor.dca_skipped_reason is not None
    rich = plan(position(), "0.8", config, balance=Decimal("1.200005"))
    assert rich.dca is not None and rich.dca.debit_sol == Decimal("1.200005")
    assert rich.final is not None and rich.final.dca_count == 1


@given(
    st.lists(
        st.decimals(min_value=Decimal("0.05"), max_value=Decimal(20), places=4),
        min_size=1,
        max_size=30,
    )
)
def test_a_price_path_never_loosens_the_stop_and_never_sells_more_than_held(
    path: list[Decimal],
) -> None:
    config = {"takeProfit": {"enabled": True}, "stopLoss": {"mode": "exponential"}}
    state: PositionState | None = position()
    sold = Decimal(0)
    for price in path:
        assert state is not None
        before = state.current_stop_loss_percentage
        result = plan(state, str(price), config)
        sold += sum((s.fill.token_amount for s in result.sales), Decimal(0))
        assert sold <= 200
        if result.final is None:
            break
        after = result.final.current_stop_loss_percentage
        assert before is not None and after is not None and after >= before
        state = result.final
