"""`plan_tick` paths that the price-path tests do not reach: a take profit that closes the
position, the stop's ratchet carried into the state, DCA bookkeeping across ticks, sales
that cannot be made, and which sales are take profits."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from tests.helpers.ticks import FEES, NOW, SOL_USD, plan_at, position
from worker.domain.exits import ExitPnl
from worker.domain.fills import sell_fill
from worker.domain.models import CloseReason, PositionState
from worker.domain.ticks import PlannedSale, TickPlan


def tick(
    pos: PositionState,
    usd: str,
    config: dict[str, Any] | None = None,
    *,
    now: datetime = NOW,
    balance: Decimal = Decimal(10),
    sol_usd: Decimal = SOL_USD,
) -> TickPlan:
    return plan_at(pos, Decimal(usd), config, now=now, balance=balance, sol_usd=sol_usd)


def sale(amount: str, usd: str) -> Any:
    return sell_fill(
        Decimal(amount),
        Decimal(usd),
        SOL_USD,
        network_fee_sol=FEES.network_fee_sol,
        protocol_fee_bps=FEES.protocol_fee_bps,
    )


# --- a take profit that sells the last tokens -------------------------------------------

LAST_LEVEL_SELLS_THE_REST = {
    "takeProfit": {
        "enabled": True,
        "mode": "custom",
        "levels": [
            {"targetPercent": 50, "sellPercent": 75},
            {"targetPercent": 100, "sellPercent": 25},
        ],
        "moonBag": {"enabled": False},
    },
}


def test_a_take_profit_that_sells_the_last_tokens_closes_the_position_with_its_pnl() -> None:
    # The first level sold 150 tokens at 0.015 SOL: 2.25 - 0.000005 = 2.249995 SOL. At +100%
    # (0.02 SOL) the second sells 25% of 200 = the 50 left: 1 SOL gross, 0.999995 net.
    pos = position(
        remaining_amount=Decimal(50),
        take_profit_levels_hit=1,
        take_profit_proceeds_sol=Decimal("2.249995"),
        realized_profit_sol=Decimal("0.749991"),
    )
    plan = tick(pos, "2", LAST_LEVEL_SELLS_THE_REST)

    assert plan.final is None
    assert plan.close_reason is CloseReason.TAKE_PROFIT
    assert plan.moves_money
    # returned 2.249995 + 0.999995 = 3.24999 SOL for 2.000005 invested: +1.249985 SOL
    # (124.9985 USD); sale price 3.24999 / 200; 1.249985 / 2.000005 = 62.49909...% -> 62.4990.
    assert plan.sales == [
        PlannedSale(
            sale("50", "2"),
            is_take_profit=True,
            close_reason=CloseReason.TAKE_PROFIT,
            pnl=ExitPnl(
                amount=Decimal(200),
                purchase_price=Decimal("0.01"),
                sale_price=Decimal("0.01624995"),
                returned_sol=Decimal("3.24999"),
                profit_loss_sol=Decimal("1.249985"),
                profit_loss_usd=Decimal("124.9985"),
                change_percent=Decimal("62.4990"),
            ),
        )
    ]
    assert plan.dca is None


def test_a_take_profit_full_exit_ends_the_tick_before_stale_and_dca() -> None:
    config = {
        **LAST_LEVEL_SELLS_THE_REST,
        "staleTrade": {"enabled": True, "minHoldTimeMinutes": 1, "maxProfitPercent": 200},
    }
    pos = position(remaining_amount=Decimal(50), take_profit_levels_hit=1)
    plan = tick(pos, "2", config)
    assert [s.close_reason for s in plan.sales] == [CloseReason.TAKE_PROFIT]


# --- the stop's ratchet ----------------------------------------------------------------------


def test_a_rise_carries_the_new_stop_and_peak_into_the_state() -> None:
    # fixed mode: a peak at +30% puts the stop at +20%.
    plan = tick(position(), "1.3")
    assert not plan.moves_money
    assert plan.final is not None
    assert plan.final.current_stop_loss_percentage == Decimal(20)
    assert plan.final.peak_price == Decimal("0.013")
    assert plan.stop_loss is not None
    assert plan.stop_loss.is_changed


def test_the_ratchet_holds_on_the_next_tick_and_sells_at_the_raised_stop() -> None:
    first = tick(position(), "1.3").final
    assert first is not None
    # +21%: below the peak, above the +20% stop: the stop stays.
    second = tick(first, "1.21").final
    assert second is not None
    assert second.current_stop_loss_percentage == Decimal(20)
    assert second.peak_price == Decimal("0.013")
    # +20%: at the stop, everything is sold.
    third = tick(second, "1.2")
    assert third.close_reason is CloseReason.STOP_LOSS


# --- DCA bookkeeping ---------------------------------------------------------------------

DCA_MODERATE = {"dca": {"enabled": True}, "stopLoss": {"enabled": False}}


def test_a_dca_sets_its_time_so_the_cooldown_applies_to_the_next_level() -> None:
    # -20%: the moderate template's first level buys 0.008 x 200 x 75% = 1.2 SOL.
    first = tick(position(), "0.8", DCA_MODERATE)
    assert first.final is not None
    assert first.final.dca_count == 1
    assert first.final.last_dca_time == NOW
    # 0.008 SOL buys 1.2 / 0.008 = 150 tokens: 350 tokens for 3.20001 SOL, 0.00914288... avg.
    assert first.final.purchase_amount == Decimal(350)
    # The second level (-20% of the new average) 29 s later: the 30 s cooldown holds it back.
    price = "0.7"  # 0.007 SOL: -23.4% of 0.009142885714...
    early = tick(first.final, price, DCA_MODERATE, now=NOW + timedelta(seconds=29))
    assert early.dca is None
    late = tick(first.final, price, DCA_MODERATE, now=NOW + timedelta(seconds=30))
    assert late.dca is not None
    assert late.final is not None
    assert late.final.dca_count == 2
    assert late.final.last_dca_time == NOW + timedelta(seconds=30)


def test_one_tick_buys_one_dca_level_even_past_several() -> None:
    # aggressive: three levels at -10% each; a tick at -25% buys the first only.
    config = {"dca": {"enabled": True, "mode": "aggressive"}, "stopLoss": {"enabled": False}}
    plan = tick(position(), "0.75", config)
    assert plan.dca is not None
    assert plan.dca.size_sol == Decimal("0.0075") * 200  # 100% of the holding's value
    assert plan.final is not None
    assert plan.final.dca_count == 1


def test_a_dca_buy_the_columns_cannot_hold_is_skipped_with_its_reason() -> None:
    # With SOL at 10^12 USD the 1.2 SOL buy is worth 1.2 x 10^12 USD: beyond numeric(20,8).
    plan = tick(position(), "8000000000", DCA_MODERATE, sol_usd=Decimal(10) ** 12)
    assert plan.dca is None
    assert plan.dca_skipped_reason == (
        "a price or SOL amount of the trade is too large for its numeric column"
    )
    assert plan.final is not None
    assert plan.final.dca_count == 0
    assert plan.is_dca_unstorable


def test_a_dca_buy_that_would_leave_the_position_beyond_its_columns_is_skipped() -> None:
    # The 1.5 SOL buy fits, but the invested SOL afterwards reaches 10^12: numeric(20,8).
    config = {"dca": {"enabled": True, "mode": "aggressive"}, "stopLoss": {"enabled": False}}
    pos = position(total_invested_sol=Decimal("999999999999"))
    plan = tick(pos, "0.75", config)
    assert plan.dca is None
    assert plan.is_dca_unstorable
    assert plan.dca_skipped_reason == (
        "the position after it cannot be stored: agent_positions.total_invested_sol would be "
        "1000000000000.500005, which numeric(20,8) cannot hold"
    )
    assert plan.final is not None
    assert plan.final.dca_count == 0
    assert plan.final.total_invested_sol == pos.total_invested_sol


def test_a_dca_buy_the_balance_cannot_pay_is_skipped_but_not_unstorable() -> None:
    config = {"dca": {"enabled": True, "mode": "aggressive"}, "stopLoss": {"enabled": False}}
    plan = tick(position(), "0.75", config, balance=Decimal(1))
    assert plan.dca is None
    assert plan.dca_skipped_reason is not None
    assert not plan.is_dca_unstorable


# --- sales that cannot be made --------------------------------------------------------------


@pytest.mark.parametrize(
    ("pos", "usd", "sol_usd"),
    [
        # nothing held: the sale rounds to 0 tokens
        (position(remaining_amount=Decimal(0)), "0.5", SOL_USD),
        # -50% with SOL at 10^12 USD: 200 x 0.005 = 1 SOL is worth 10^12 USD, too much
        (position(), "5000000000", Decimal(10) ** 12),
    ],
    ids=["no tokens", "too large for the columns"],
)
def test_a_stop_loss_sale_that_cannot_be_made_keeps_the_position(
    pos: PositionState, usd: str, sol_usd: Decimal
) -> None:
    plan = tick(pos, usd, sol_usd=sol_usd)
    assert plan.stop_loss is not None
    assert plan.stop_loss.is_triggered
    assert plan.sales == []
    assert plan.close_reason is None
    assert plan.final is not None
    assert plan.final.held_amount == pos.held_amount


def test_a_take_profit_sale_that_credits_no_sol_leaves_the_level_pending() -> None:
    # 200 tokens at 1e-9 SOL; at +60% the first level sells 50 tokens for 8e-8 SOL, which
    # the 0.000005 SOL network fee takes whole: no sale, nothing written.
    pos = position(
        purchase_price=Decimal("1e-9"),
        total_invested_sol=Decimal("0.0000052"),
        peak_price=Decimal("1e-9"),
        lowest_price=Decimal("1e-9"),
    )
    plan = tick(
        pos, "0.00000016", {"takeProfit": {"enabled": True}, "stopLoss": {"enabled": False}}
    )
    assert plan.sales == []
    assert plan.final is not None
    assert plan.final.take_profit_levels_hit == 0
    assert plan.final.held_amount == 200
    assert plan.final.take_profit_proceeds_sol == 0


# --- which sales are take profits -----------------------------------------------------------


def test_stop_loss_and_stale_closes_are_not_take_profits() -> None:
    stop = tick(position(), "0.68")
    stale = tick(
        position(created_at=NOW - timedelta(hours=1)), "1.05", {"stopLoss": {"enabled": False}}
    )
    assert [(s.is_take_profit, s.close_reason) for s in stop.sales] == [
        (False, CloseReason.STOP_LOSS)
    ]
    assert [(s.is_take_profit, s.close_reason) for s in stale.sales] == [
        (False, CloseReason.STALE_TRADE)
    ]


def test_the_plan_closes_for_the_last_sales_reason() -> None:
    # +60% sells a level (a take profit, no close), then the stale rule sells the rest.
    config = {
        "takeProfit": {"enabled": True},
        "stopLoss": {"enabled": False},
        "staleTrade": {"enabled": True, "minHoldTimeMinutes": 1, "maxProfitPercent": 100},
    }
    plan = tick(position(), "1.6", config)
    assert [(s.is_take_profit, s.close_reason) for s in plan.sales] == [
        (True, None),
        (False, CloseReason.STALE_TRADE),
    ]
    assert plan.close_reason is CloseReason.STALE_TRADE


def test_a_plan_without_sales_closes_nothing() -> None:
    plan = tick(position(), "1.05")
    assert plan.sales == []
    assert plan.close_reason is None
    assert plan.final == replace(
        position(), lowest_price=Decimal("0.01"), peak_price=Decimal("0.0105")
    )
