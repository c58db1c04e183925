"""The figures traders compare configs by (`worker.domain.performance`), against values
computed by hand on a few trades."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from uuid import uuid4

import pytest

from worker.domain.money import MATH_CONTEXT
from worker.domain.performance import (
    INFINITY,
    Performance,
    TradeOutcome,
    daily_returns,
    max_drawdown,
    performance,
    profit_factor,
)
from worker.domain.results import Close, summarize


def _t(pnl: str, day: int, hour: int, held_s: float = 60.0) -> TradeOutcome:
    return TradeOutcome(Decimal(pnl), datetime(2026, 11, day, hour, tzinfo=UTC), held_s)


# From 10 SOL: +1 and -2 on Nov 1, nothing on Nov 2, +0.5 and -0.2 on Nov 3.
# Equity 10, 11, 9, 9.5, 9.3; the peak 11 falls to 9.
BOOK = [
    _t("1", 1, 10, 60.0),
    _t("-2", 1, 15, 180.0),
    _t("0.5", 3, 9, 120.0),
    _t("-0.2", 3, 12, 600.0),
]


def test_the_figures_of_a_small_book_are_the_hand_computed_ones() -> None:
    # Daily returns: -1/10, 0/9, +0.3/9 = 1/30; mean -1/45; deviations -7/90, 2/90, 5/90:
    # population variance 78/8100/3 = 26/8100, Sharpe = (-1/45)/(sqrt(26)/90) x sqrt(365)
    # = -2 sqrt(365/26) = -7.4936; downside sqrt(0.01/3) = 0.1/sqrt(3), Sortino =
    # -(2/9) sqrt(1095) = -7.3535.
    assert performance(BOOK, Decimal(10)) == Performance(
        max_drawdown_sol=Decimal(2),
        max_drawdown_pct=Decimal("18.18"),  # 2 / 11
        profit_factor=Decimal("0.68"),  # 1.5 / 2.2
        expectancy_sol=Decimal("-0.175"),  # -0.7 / 4
        median_hold_s=150.0,  # 60 120 | 180 600
        sharpe=Decimal("-7.49"),
        sortino=Decimal("-7.35"),
        best_trade_sol=Decimal(1),
        worst_trade_sol=Decimal(-2),
    )


def test_the_order_given_does_not_matter_the_close_times_do() -> None:
    assert performance(list(reversed(BOOK)), Decimal(10)) == performance(BOOK, Decimal(10))


def test_no_trades_no_figures() -> None:
    assert performance([], Decimal(10)) == Performance()
    assert all(v is None for v in summarize_figures([]).values())


def test_no_loss_makes_an_infinite_profit_factor_and_no_fall() -> None:
    wins = [_t("0.5", 1, 10), _t("0.25", 2, 10)]
    p = performance(wins, Decimal(5))
    assert p.profit_factor == INFINITY
    assert (p.max_drawdown_sol, p.max_drawdown_pct) == (Decimal(0), Decimal(0))
    # Returns 0.1 and 0.25/5.5: no losing day, a mean above 0.
    assert p.sortino == INFINITY
    assert p.sharpe is not None and p.sharpe > 0


def test_only_even_exits_have_no_profit_factor_and_no_ratios() -> None:
    p = performance([_t("0", 1, 10), _t("0", 2, 10)], Decimal(5))
    assert (p.profit_factor, p.sharpe, p.sortino) == (None, None, None)
    assert p.expectancy_sol == 0


def test_only_losses_make_a_profit_factor_of_zero() -> None:
    assert profit_factor([Decimal("-1"), Decimal("-0.5")]) == 0


def test_one_day_is_too_short_for_sharpe_and_sortino() -> None:
    p = performance([_t("1", 1, 10), _t("-0.5", 1, 20)], Decimal(10))
    assert (p.sharpe, p.sortino) == (None, None)
    assert p.max_drawdown_sol == Decimal("0.5")
    assert p.max_drawdown_pct == Decimal("4.55")  # 0.5 / 11


def test_the_drawdown_in_percent_is_of_the_peak_and_needs_one_above_zero() -> None:
    # From 0: equity 1 then -1: a fall of 2 SOL, 200% of the peak of 1.
    assert max_drawdown([Decimal(1), Decimal(-2)], Decimal(0)) == (Decimal(2), Decimal(200))
    # Never above 0: no percentage.
    assert max_drawdown([Decimal(-1)], Decimal(0)) == (Decimal(1), None)


def test_days_are_utc_days_and_quiet_days_return_zero() -> None:
    late = datetime(2026, 11, 1, 23, 30, tzinfo=timezone(timedelta(hours=-2)))  # Nov 2 UTC
    trades = [_t("1", 1, 10), TradeOutcome(Decimal("1.1"), late, 1.0), _t("-1.2", 4, 1)]
    # 1/10 on Nov 1, 1.1/11 on Nov 2, 0 on Nov 3, -1.2/12.1 on Nov 4.
    assert daily_returns(trades, Decimal(10)) == [
        Decimal("0.1"),
        Decimal("0.1"),
        Decimal(0),
        MATH_CONTEXT.divide(Decimal("-1.2"), Decimal("12.1")),  # 60 digits, as computed
    ]


def test_no_ratio_when_the_equity_at_a_days_start_is_not_above_zero() -> None:
    p = performance([_t("-1", 1, 10), _t("1", 2, 10)], Decimal(1))
    assert (p.sharpe, p.sortino) == (None, None)


def test_the_report_carries_the_figures_and_prints_infinity_as_inf() -> None:
    figures = summarize_figures(
        [
            Close(Decimal("0.5"), Decimal(1), 60.0, datetime(2026, 11, 1, tzinfo=UTC)),
            Close(Decimal("0.3"), Decimal(1), 120.0, datetime(2026, 11, 2, tzinfo=UTC)),
        ]
    )
    assert figures == {
        "max_drawdown_sol": "0",
        "max_drawdown_pct": "0",
        "profit_factor": "inf",
        "expectancy_sol": "0.4",
        "median_hold_s": 90.0,
        "sharpe": figures["sharpe"],  # returns 0.05 and 0.3/10.5: checked above
        "sortino": "inf",
        "best_trade_sol": "0.5",
        "worst_trade_sol": "0.3",
    }


@pytest.mark.parametrize("starting", [Decimal(10), Decimal("10.5")])
def test_the_report_starts_the_equity_curve_at_the_starting_sol(starting: Decimal) -> None:
    closes = [
        Close(Decimal(1), Decimal(1), 1.0, datetime(2026, 11, 1, tzinfo=UTC)),
        Close(Decimal(-2), Decimal(1), 1.0, datetime(2026, 11, 1, 1, tzinfo=UTC)),
    ]
    r = summarize(uuid4(), "a", executions={}, closes=closes, holdings=[], prices_sol={},
                  balance_sol=None, starting_sol=starting)  # fmt: skip
    peak = starting + 1
    assert r.figures.max_drawdown_pct == (2 * 100 / peak).quantize(Decimal("0.01"))


def summarize_figures(closes: list[Close]) -> dict[str, object]:
    r = summarize(uuid4(), "a", executions={}, closes=closes, holdings=[], prices_sol={},
                  balance_sol=None, starting_sol=Decimal(10))  # fmt: skip
    d = r.as_dict()
    keys = ("max_drawdown_sol", "max_drawdown_pct", "profit_factor", "expectancy_sol",
            "median_hold_s", "sharpe", "sortino", "best_trade_sol", "worst_trade_sol")  # fmt: skip
    return {k: d[k] for k in keys}
