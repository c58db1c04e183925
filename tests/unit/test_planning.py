"""`worker.domain.planning`: a chunk's ticks over the positions of their tokens, pure.

No store: the positions are given as the shell reads them (`TrailRow` for every open
position, `OpenPosition` for the loud ones), and the ids of sales and DCA buys come from a
counter, so every written row is known exactly.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from worker.domain.config import AgentTradingConfig, resolve_config
from worker.domain.fills import Fees, token_price_sol
from worker.domain.ids import tick_transaction_id
from worker.domain.models import SOL_MINT, CloseReason, PositionState
from worker.domain.planning import Step, TickTally, Writes, act_loud, trail_quiet
from worker.domain.records import OpenPosition, PositionWrite, TrailRow, TrailUpdate
from worker.domain.storable import Unstorable
from worker.domain.ticks import plan_tick

TOKEN = "7GCihgDB8fe6KNjn2MYtkzZcRjQy3t9GHdC8uHYmW2hr"
BOUGHT = datetime(2026, 11, 26, 12, tzinfo=UTC)
NOW = BOUGHT + timedelta(seconds=30)
FEES = Fees(Decimal("0.000005"), Decimal(0))
SOL_USD = Decimal(100)
TP_AND_DCA = {
    "stopLoss": {"enabled": False},
    "takeProfit": {"enabled": True},
    "dca": {"enabled": True, "mode": "aggressive"},
}
DCA_ONLY = {"dca": {"enabled": True, "mode": "aggressive"}, "stopLoss": {"enabled": False}}


def _position(
    n: int = 1, sol: Decimal = Decimal(8), wallet: str | None = None, **state: Any
) -> OpenPosition:
    """200 tokens at 0.01 SOL (1 USD with SOL at 100), stop at -32%, peak and low 0.01."""
    fields: dict[str, Any] = {
        "purchase_price": Decimal("0.01"),
        "purchase_amount": Decimal(200),
        "total_invested_sol": Decimal("2.000005"),
        "created_at": BOUGHT,
        "current_stop_loss_percentage": Decimal(-32),
        "peak_price": Decimal("0.01"),
        "lowest_price": Decimal("0.01"),
        **state,
    }
    return OpenPosition(
        id=uuid.UUID(int=n),
        agent_id=uuid.UUID(int=1000 + n),
        wallet_address=wallet or f"sim_{n}",
        token_address=TOKEN,
        token_symbol="TKN",
        purchase_transaction_id=uuid.UUID(int=2000 + n),
        signal_id=7,
        sol_balance=sol,
        state=PositionState(**fields),
    )


def _trail(p: OpenPosition) -> TrailRow:
    s = p.state
    assert s.lowest_price is not None
    return TrailRow(
        p.id, p.agent_id, p.token_address, p.wallet_address, s.purchase_price,
        s.created_at, s.current_stop_loss_percentage, s.peak_price, s.lowest_price,
    )  # fmt: skip


def _ts(i: int) -> datetime:
    """The observed time of the chunk's tick `i` (all decided at NOW)."""
    return NOW + timedelta(microseconds=i)


def _steps(*usd: str, sol_usd: Decimal = SOL_USD) -> list[Step]:
    return [
        Step(i, TOKEN, Decimal(u), sol_usd, token_price_sol(Decimal(u), sol_usd), NOW, _ts(i))
        for i, u in enumerate(usd)
    ]


def _tx(p: OpenPosition, tick: int, kind: str, index: int = 0) -> uuid.UUID:
    """The id of the sale or DCA buy of `p` at the chunk's tick `tick`."""
    return tick_transaction_id(p.id, NOW, _ts(tick), kind, index)


def _run(
    positions: list[OpenPosition],
    steps: list[Step],
    config: dict[str, Any] | None = None,
    *,
    cfgs: dict[uuid.UUID, AgentTradingConfig] | None = None,
) -> tuple[Writes, list[TickTally], set[uuid.UUID]]:
    """The chunk as `handle_prices` plans it: the quiet pass, then the loud positions."""
    cfg = resolve_config(config)
    cfgs = cfgs if cfgs is not None else {p.id: cfg for p in positions}
    writes, tallies = Writes(), [TickTally() for _ in steps]
    loud = trail_quiet(steps, [_trail(p) for p in positions], cfgs, writes, tallies)
    held = [p for p in positions if p.id in loud]
    act_loud(steps, held, cfgs, fees=FEES, writes=writes, tallies=tallies)
    return writes, tallies, set(loud)


def test_sales_and_dca_buys_take_ids_derived_from_their_position_tick_and_kind() -> None:
    p = _position()
    # +60%: the first take-profit level sells; then -11%: the aggressive DCA's first level.
    writes, tallies, loud = _run([p], _steps("1.6", "0.89"), TP_AND_DCA)
    assert loud == {p.id}
    tp, dca = _tx(p, 0, "take_profit"), _tx(p, 1, "dca")
    assert len({tp, dca}) == 2
    assert [(s.id, s.is_take_profit, s.is_dca) for s in writes.swaps] == [
        (tp, True, False),
        (dca, False, True),
    ]
    [update] = writes.updates
    assert update.dca_transaction_ids == (dca,)
    assert update.take_profit_transaction_ids == (tp,)
    # No stop loss in this config: the peak and stop never move (no `stop_at`).
    assert update == PositionWrite(p.id, update.state, NOW, (dca,), (tp,), None, NOW)
    assert update.state.dca_count == 1
    assert (update.state.take_profit_levels_hit, update.state.remaining_amount) == (1, Decimal(300))
    assert [(t.partial_sales, t.dca_buys, t.closes) for t in tallies] == [(1, 0, {}), (0, 1, {})]
    assert writes.closed == []
    assert writes.trails == []


def test_a_full_exit_takes_its_id_from_its_tick_and_counts_once() -> None:
    p = _position()
    writes, tallies, _ = _run([p], _steps("0.67", "0.5"))
    [sale] = writes.swaps
    [closed] = writes.closed
    sold = _tx(p, 0, "stop_loss")
    assert (sale.id, closed.sale_transaction_id, closed.at) == (sold, sold, NOW)
    assert (closed.position, closed.close_reason) == (p, CloseReason.STOP_LOSS)
    assert [t.closes for t in tallies] == [{"stop_loss": 1}, {}]
    # The second tick finds the position closed: it no longer counts it.
    assert [t.positions for t in tallies] == [1, 0]
    assert (writes.updates, writes.trails) == ([], [])
    assert sum(d.delta for d in writes.deltas if d.token_address == SOL_MINT) == (
        Decimal("1.34") - FEES.network_fee_sol
    )


def test_a_loud_position_that_does_not_trade_writes_the_state_its_plan_reached() -> None:
    # +40%: past the trailing start, so loud; the stop ratchets, nothing sells.
    p = _position(lowest_price=Decimal("0.008"))
    writes, tallies, loud = _run([p], _steps("1.4", "1.35"))
    assert loud == {p.id}
    plan = plan_tick(p.state, token_usd=Decimal("1.4"), sol_usd=SOL_USD, now=NOW,
                     cfg=resolve_config(None), sol_balance=Decimal(8), fees=FEES)  # fmt: skip
    final = plan.final
    assert final is not None
    assert final.current_stop_loss_percentage is not None
    assert final.current_stop_loss_percentage > Decimal(-32)
    assert writes.trails == [
        TrailUpdate(
            p.id, Decimal("0.014"), final.current_stop_loss_percentage, Decimal("0.008"), NOW, NOW
        )
    ]
    # Only the first tick moved it: at +35% the peak and the stop hold.
    assert [t.trailed for t in tallies] == [1, 0]
    assert (writes.swaps, writes.updates) == ([], [])


def test_quiet_ticks_trail_from_where_the_chunks_earlier_ticks_left_the_position() -> None:
    # Stale trades on (not old enough yet: its creation time is read on every tick).
    stale = {"staleTrade": {"enabled": True, "minHoldTimeMinutes": 60}}
    p = _position()
    writes, tallies, loud = _run([p], _steps("1.05", "0.95", "1.02"), stale)
    assert loud == set()
    assert writes.trails == [
        TrailUpdate(p.id, Decimal("0.0105"), Decimal(-32), Decimal("0.0095"), NOW, NOW)
    ]
    assert [(t.positions, t.trailed) for t in tallies] == [(1, 1), (1, 1), (1, 0)]


def test_a_position_loud_at_a_later_tick_is_planned_whole_its_trails_counted_once() -> None:
    p = _position()
    writes, tallies, loud = _run([p], _steps("1.05", "0.5"))
    assert loud == {p.id}
    assert [t.trailed for t in tallies] == [1, 0]  # counted once, by the full plan
    assert [t.closes for t in tallies] == [{}, {"stop_loss": 1}]
    assert writes.trails == []  # closed: the quiet trail of the first tick is dropped


def test_a_position_whose_agent_has_no_config_is_left_out() -> None:
    kept, gone = _position(1), _position(2)
    cfgs = {kept.id: resolve_config(None)}
    writes, tallies, loud = _run([kept, gone], _steps("1.05"), cfgs=cfgs)
    assert loud == set()
    assert [t.positions for t in tallies] == [1]
    assert [t.id for t in writes.trails] == [kept.id]


def test_a_dca_buy_beyond_the_columns_is_reported_an_unaffordable_one_is_not() -> None:
    big = _position(1, total_invested_sol=Decimal("999999999999"))
    poor = _position(2, sol=Decimal(1))
    writes, tallies, loud = _run([big, poor], _steps("0.75"), DCA_ONLY)
    assert loud == {big.id, poor.id}
    reason = (
        "the position after it cannot be stored: agent_positions.total_invested_sol would be "
        "1000000000000.500005, which numeric(20,8) cannot hold"
    )
    assert tallies[0].unstorable == [Unstorable("dca", str(big.id), reason)]
    assert (writes.swaps, tallies[0].dca_buys) == ([], 0)
    assert {t.id for t in writes.trails} == {big.id, poor.id}  # their lows still trail


def _unstorable_trade(p: OpenPosition, *usd: str, **kw: Any) -> tuple[Writes, TickTally]:
    writes, tallies, loud = _run([p], _steps(*usd, **kw), TP_AND_DCA | kw.pop("config", {}))
    assert loud == {p.id}
    assert (writes.swaps, writes.deltas, writes.updates, writes.closed) == ([], [], [], [])
    return writes, tallies[0]


def test_a_take_profit_that_leaves_the_position_beyond_its_columns_is_left_out() -> None:
    p = _position(take_profit_proceeds_sol=Decimal("999999999999.9"))
    _, tally = _unstorable_trade(p, "1.6")
    [skipped] = tally.unstorable
    assert (skipped.what, skipped.subject) == ("trade", str(p.id))
    assert "take_profit_proceeds_sol" in skipped.reason
    assert tally.partial_sales == 0


def test_an_exit_whose_pnl_no_column_holds_is_left_out() -> None:
    # 10 SOL invested, sold for 0.001 SOL with SOL at 2e11 USD: a loss of 2e12 USD.
    p = _position(purchase_price=Decimal("0.05"), total_invested_sol=Decimal("10.000005"))
    sol_usd = Decimal("2e11")
    writes, tallies, _ = _run([p], _steps("1000000", sol_usd=sol_usd))
    [skipped] = tallies[0].unstorable
    assert (skipped.what, skipped.subject) == ("trade", str(p.id))
    assert "profit_loss_usd" in skipped.reason
    assert (writes.swaps, writes.closed, tallies[0].closes) == ([], [], {})


def test_a_sale_that_would_take_the_wallet_beyond_its_column_is_left_out() -> None:
    p = _position(sol=Decimal("999999999999.5"))
    writes, tallies, _ = _run([p], _steps("0.67"))
    [skipped] = tallies[0].unstorable
    assert (skipped.what, skipped.subject) == ("trade", str(p.id))
    assert "agent_balances.balance" in skipped.reason
    assert (writes.swaps, writes.closed) == ([], [])


def test_the_wallets_sol_carries_from_one_position_to_the_next() -> None:
    # Two positions of one wallet with 2.5 SOL: each DCA buy costs 1.500005 SOL, so the
    # first one's leaves too little for the second one's.
    first = _position(1, sol=Decimal("2.5"), wallet="sim_shared")
    second = _position(2, sol=Decimal("2.5"), wallet="sim_shared")
    writes, tallies, _ = _run([first, second], _steps("0.75"), DCA_ONLY)
    assert tallies[0].dca_buys == 1
    assert [(u.id, u.dca_transaction_ids) for u in writes.updates] == [
        (first.id, (_tx(first, 0, "dca"),))
    ]


def test_a_tally_says_whether_the_tick_traded() -> None:
    assert not TickTally().traded
    assert TickTally(closes={"stop_loss": 1}).traded
    assert TickTally(partial_sales=1).traded
    assert TickTally(dca_buys=1).traded
    assert not replace(TickTally(), trailed=3, positions=2).traded


def test_the_rows_of_a_trade_name_the_position_its_agent_signal_and_time() -> None:
    p = _position()
    writes, _, _ = _run([p], _steps("1.6", "0.89"), TP_AND_DCA)
    sale, dca = writes.swaps
    for swap in (sale, dca):
        assert (swap.agent_id, swap.wallet_address, swap.position_id) == (p.agent_id, "sim_1", p.id)
        assert (swap.signal_id, swap.time) == (7, NOW)
    assert (sale.input_mint, sale.input_symbol) == (TOKEN, "TKN")
    assert (dca.output_mint, dca.output_symbol) == (TOKEN, "TKN")
    assert {(d.agent_id, d.wallet_address) for d in writes.deltas} == {(p.agent_id, "sim_1")}
    assert {d.token_symbol for d in writes.deltas if d.token_address == TOKEN} == {"TKN"}


def test_a_tick_of_a_token_without_positions_counts_none() -> None:
    p = _position()
    other = Step(1, SOL_MINT, SOL_USD, SOL_USD, Decimal(1), NOW, _ts(1))
    writes, tallies, _ = _run([p], [*_steps("1.05"), other])
    assert [t.positions for t in tallies] == [1, 0]
    assert [t.id for t in writes.trails] == [p.id]


def test_every_dca_buy_of_a_tick_is_counted() -> None:
    writes, tallies, _ = _run([_position(1), _position(2)], _steps("0.75"), DCA_ONLY)
    assert tallies[0].dca_buys == 2
    assert len(writes.updates) == 2


def test_both_sales_of_one_plan_credit_the_wallet_before_the_next_position() -> None:
    # A (bought at 0.01 SOL) sells a take-profit level at +60% and closes as a stale trade
    # (its band reaches 100%) in one tick: 0.8 + 2.4 SOL, less two fees. B, in the same
    # wallet and bought at 0.02 SOL, is then at -20%: its DCA buy costs 3.000005 SOL, which
    # the wallet has only with both sales credited (0.5 + 3.19999).
    a = _position(
        1, sol=Decimal("0.5"), wallet="sim_shared", created_at=BOUGHT - timedelta(hours=2)
    )
    b = _position(2, sol=Decimal("0.5"), wallet="sim_shared", purchase_price=Decimal("0.02"),
                  purchase_amount=Decimal("187.5"), peak_price=Decimal("0.02"),
                  lowest_price=Decimal("0.02"))  # fmt: skip
    stale = {"enabled": True, "minHoldTimeMinutes": 1, "maxProfitPercent": 100}
    cfgs = {
        a.id: resolve_config({"takeProfit": {"enabled": True}, "staleTrade": stale}),
        b.id: resolve_config({**DCA_ONLY, "staleTrade": {"enabled": False}}),
    }
    writes, tallies, _ = _run([a, b], _steps("1.6"), cfgs=cfgs)
    assert (tallies[0].partial_sales, tallies[0].closes) == (1, {"stale_trade": 1})
    assert tallies[0].dca_buys == 1
    assert [u.id for u in writes.updates] == [b.id]
