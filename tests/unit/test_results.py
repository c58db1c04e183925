"""`worker.domain.results.summarize`: the figures of `report` and `replay`."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from uuid import UUID

from worker.domain.results import AgentResult, Close, Holding, summarize

AGENT = UUID(int=7)


def _summary(
    closes: list[Close] | None = None,
    holdings: list[Holding] | None = None,
    prices: dict[str, Decimal] | None = None,
) -> AgentResult:
    return summarize(
        AGENT,
        "Steady",
        executions={"success": 3, "skipped": 2},
        closes=closes or [],
        holdings=holdings or [],
        prices_sol=prices or {},
        balance_sol=Decimal("9.5"),
    )


def test_an_agent_without_trades_has_no_rates_and_no_profit() -> None:
    r = _summary()
    assert (r.trades, r.win_rate_pct, r.realised_pnl_sol, r.realised_pnl_pct) == (
        0,
        None,
        Decimal(0),
        None,
    )
    assert (r.open_positions, r.unrealised_pnl_sol, r.avg_hold_s, r.largest_loss_sol) == (
        0,
        Decimal(0),
        None,
        None,
    )
    assert r.executions == {"success": 3, "skipped": 2}
    assert r.balance_sol == Decimal("9.5")


def test_realised_figures_come_from_the_exits() -> None:
    r = _summary(
        [
            Close(Decimal("0.5"), Decimal(1), 60.0),
            Close(Decimal("-0.25"), Decimal(2), 180.0),
            Close(Decimal("0.1"), Decimal(1), 120.0),
        ]
    )
    assert r.trades == 3
    assert r.win_rate_pct == Decimal("66.67")
    assert r.realised_pnl_sol == Decimal("0.35")
    assert r.realised_pnl_pct == Decimal("8.75")  # 0.35 of the 4 SOL they cost
    assert r.avg_hold_s == 120.0
    assert r.largest_loss_sol == Decimal("-0.25")


def test_unrealised_values_open_positions_as_a_sale_now_would() -> None:
    # 100 tokens left at 0.03 SOL = 3 SOL, 0.5 SOL already returned by take profit, 2.5
    # invested: +1 SOL; the second: 10 x 0.1 - 2 = -1.
    holdings = [
        Holding("A", Decimal(100), Decimal("2.5"), Decimal("0.5")),
        Holding("B", Decimal(10), Decimal(2), Decimal(0)),
    ]
    r = _summary(holdings=holdings, prices={"A": Decimal("0.03"), "B": Decimal("0.1")})
    assert r.open_positions == 2
    assert r.unrealised_pnl_sol == Decimal(0)
    r = _summary(holdings=holdings[:1], prices={"A": Decimal("0.03")})
    assert r.unrealised_pnl_sol == Decimal(1)


def test_unrealised_is_unknown_when_a_held_token_has_no_price() -> None:
    holdings = [
        Holding("A", Decimal(1), Decimal(1), Decimal(0)),
        Holding("B", Decimal(1), Decimal(1), Decimal(0)),
    ]
    assert _summary(holdings=holdings, prices={"A": Decimal(2)}).unrealised_pnl_sol is None
    assert _summary(holdings=holdings, prices={"B": Decimal(2)}).unrealised_pnl_sol is None


def test_the_held_tokens_without_a_price_are_named() -> None:
    holdings = [
        Holding("B", Decimal(1), Decimal(1), Decimal(0)),
        Holding("A", Decimal(1), Decimal(1), Decimal(0)),
        Holding("C", Decimal(1), Decimal(1), Decimal(0)),
    ]
    r = _summary(holdings=holdings, prices={"A": Decimal(2)})
    assert r.unpriced_tokens == ("B", "C")
    assert r.as_dict()["unpriced_tokens"] == ["B", "C"]
    assert _summary(holdings=holdings).unpriced_tokens == ("A", "B", "C")  # no SOL/USD
    priced = _summary(holdings=holdings, prices=dict.fromkeys("ABC", Decimal(2)))
    assert (priced.unpriced_tokens, priced.unrealised_pnl_sol) == ((), Decimal(3))


def test_profit_is_kept_to_the_lamport_and_rates_to_two_places() -> None:
    r = _summary([Close(Decimal("0.123456789"), Decimal(3), 1.0)])
    assert r.realised_pnl_sol == Decimal("0.12345678")  # 8 places, towards zero
    assert r.realised_pnl_pct == Decimal("4.12")
    r = _summary([Close(Decimal("-0.123456789"), Decimal(3), 1.0)])
    assert r.realised_pnl_sol == Decimal("-0.12345678")
    assert r.win_rate_pct == Decimal(0)


def test_as_dict_is_json_ready_with_every_status() -> None:
    closed = datetime(2026, 11, 1, tzinfo=UTC)
    d = _summary([Close(Decimal("1.50"), Decimal(3), 90.26, closed)]).as_dict()
    assert d == {
        "agent_id": str(AGENT),
        "name": "Steady",
        "executions": {"success": 3, "skipped": 2, "failed": 0},
        "trades": 1,
        "win_rate_pct": "100",
        "realised_pnl_sol": "1.5",
        "realised_pnl_pct": "50",
        "open_positions": 0,
        "unrealised_pnl_sol": "0",
        "avg_hold_s": 90.3,
        "largest_loss_sol": None,
        "balance_sol": "9.5",
        "max_drawdown_sol": "0",
        "max_drawdown_pct": "0",
        "profit_factor": "inf",
        "expectancy_sol": "1.5",
        "median_hold_s": 90.3,
        "sharpe": None,
        "sortino": None,
        "best_trade_sol": "1.5",
        "worst_trade_sol": "1.5",
        "unpriced_tokens": [],
    }


def test_an_exit_at_exactly_zero_is_neither_a_win_nor_a_loss() -> None:
    r = _summary([Close(Decimal(0), Decimal(1), 10.0), Close(Decimal("0.2"), Decimal(1), 30.0)])
    assert r.win_rate_pct == Decimal(50)
    assert r.largest_loss_sol is None
    assert r.realised_pnl_pct == Decimal(10)


def test_as_dict_of_an_agent_without_exits_and_of_one_with_a_loss() -> None:
    assert _summary().as_dict()["avg_hold_s"] is None
    assert _summary().as_dict()["unrealised_pnl_sol"] == "0"
    lost = _summary([Close(Decimal("-0.75"), Decimal(2), 5.0)]).as_dict()
    assert lost["largest_loss_sol"] == "-0.75"
    assert lost["realised_pnl_pct"] == "-37.5"


def test_prices_in_sol_need_sols_own_price() -> None:
    from worker.domain.results import prices_in_sol

    usd = {"SOL": Decimal(100), "A": Decimal(2), "B": Decimal("0.5")}
    assert prices_in_sol(usd, "SOL") == {"A": Decimal("0.02"), "B": Decimal("0.005")}
    assert prices_in_sol({"A": Decimal(2)}, "SOL") == {}
