"""A chunk of ticks does what the same ticks do one at a time, wherever the chunks end.

`handle_prices` reads and writes set-based but runs the rules tick by tick in memory; these
tests hold it to the result of one call per tick, over random price paths through positions
with every kind of exit (trailing stops of each mode, take profit with a moon bag, DCA,
stale closes), several tokens per wallet and SOL/USD moving in between.
"""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.memory import RecordingStore, add_agent, open_position
from worker.domain.models import SOL_MINT, PositionState, PriceTick
from worker.handlers.config_cache import ConfigTexts
from worker.handlers.ticks import TickOutcome, handle_prices
from worker.settings import Settings

TRADING = Settings().trading
BOUGHT = datetime(2026, 1, 1, 12, tzinfo=UTC)
NOW = BOUGHT + timedelta(hours=2)  # past the stale trade's hold time
TOKENS = [f"Tok{c}" + "1" * 40 for c in "ABC"]
CONFIGS: list[dict[str, Any]] = [
    {},
    {"stopLoss": {"mode": "exponential"}},
    {"stopLoss": {"mode": "zones"}, "takeProfit": {"enabled": True}},
    {
        "stopLoss": {
            "mode": "custom",
            "trailingLevels": [{"change": 20, "stopLoss": 10}, {"change": 5, "stopLoss": -5}],
        }
    },
    {"takeProfit": {"enabled": True, "mode": "aggressive"}, "stopLoss": {"enabled": False}},
    {"dca": {"enabled": True, "mode": "aggressive", "cooldownSeconds": 10}},
    {"staleTrade": {"enabled": True, "minProfitPercent": -5, "maxProfitPercent": 5}},
]


def _store(sol_balances: list[Decimal]) -> RecordingStore:
    """Two wallets per config, each with a position in every token, bought at 0.01 SOL."""
    store = RecordingStore(prices={SOL_MINT: (Decimal(100), BOUGHT)})
    state = PositionState(
        purchase_price=Decimal("0.01"),
        purchase_amount=Decimal(100),
        total_invested_sol=Decimal("1.000005"),
        created_at=BOUGHT,
        current_stop_loss_percentage=Decimal(-32),
        peak_price=Decimal("0.01"),
        lowest_price=Decimal("0.01"),
    )
    n = 0
    for config in CONFIGS:
        for _ in range(2):
            agent = add_agent(store, config=config, sol=sol_balances[n % len(sol_balances)],
                              agent_id=uuid.UUID(int=n + 1), wallet=f"sim_{n:04d}")  # fmt: skip
            for k, token in enumerate(TOKENS):
                position_id = uuid.UUID(int=1000 * (n + 1) + k)
                open_position(store, agent, token, state, position_id=position_id, symbol=f"T{k}")
            n += 1
    return store


def _ticks(path: list[tuple[int, int]]) -> list[PriceTick]:
    """(token index, price in cents) pairs as ticks one second apart from NOW (past the
    stale hold; 10 s DCA cooldowns end within a path); index 3 is SOL/USD (priced around
    100 USD, the others around 1 USD)."""
    ticks = []
    for i, (which, cents) in enumerate(path):
        token = SOL_MINT if which == len(TOKENS) else TOKENS[which]
        price = Decimal(cents) if token == SOL_MINT else Decimal(cents) / 100
        ts = NOW + timedelta(seconds=i + 1)
        ticks.append(PriceTick(token, price, ts))
    return ticks


async def _run(store: RecordingStore, ticks: list[PriceTick], cuts: list[int]) -> list[TickOutcome]:
    configs = ConfigTexts()
    outcomes: list[TickOutcome] = []
    bounds = [0, *sorted(set(cuts)), len(ticks)]
    for start, end in itertools.pairwise(bounds):
        if start < end:
            outcomes += await handle_prices(
                store, ticks[start:end], configs=configs, trading=TRADING
            )
    return outcomes


def _state(store: RecordingStore) -> dict[str, Any]:
    """The store's content, with every id and time (derived from the ticks, so a chunk
    and single ticks write the same ones)."""
    swaps = sorted(
        (s.id, s.time, s.agent_id, s.input_mint, s.output_mint, s.input_amount,
         s.output_amount, s.network_fee_sol, s.protocol_fee_sol, s.is_dca, s.is_take_profit,
         s.position_id)
        for s in store.swaps
    )  # fmt: skip
    history = sorted(
        (c.position.id, c.close_reason, c.pnl.profit_loss_sol, c.pnl.sale_price,
         c.sale_transaction_id, c.at)
        for c in store.history
    )  # fmt: skip
    return {
        "positions": {i: p.state for i, p in store.positions.items()},
        "balances": dict(store.balances),
        "prices": dict(store.prices),
        "swaps": swaps,
        "history": history,
    }


def _summary(outcomes: list[TickOutcome]) -> list[tuple[Any, ...]]:
    return [
        (o.token, o.is_newer, o.positions, o.trailed, o.closes, o.partial_sales, o.dca_buys)
        for o in outcomes
    ]


PATH = st.lists(
    st.tuples(
        st.integers(0, len(TOKENS)),
        st.integers(30, 400),
    ),
    min_size=1,
    max_size=30,
).map(lambda p: [(w, c if w < len(TOKENS) else 60 + c // 4) for w, c in p])
CUTS = st.lists(st.integers(1, 29), max_size=6)


@settings(max_examples=60, deadline=None)
@given(
    path=PATH,
    cuts=CUTS,
    balances=st.sampled_from([[Decimal(5)], [Decimal("1.5")], [Decimal("0.2")]]),
)
@example(  # a fall through the stops and a rebound, in one chunk
    path=[(0, 60), (0, 120), (1, 250), (1, 90), (3, 80), (2, 40), (2, 400)],
    cuts=[],
    balances=[Decimal(5)],
)
@example(  # DCA dips in two tokens of the same wallets with little SOL, SOL/USD moving
    path=[(0, 85), (3, 150), (1, 80), (0, 70), (1, 60), (3, 90), (0, 55)],
    cuts=[3],
    balances=[Decimal("0.2")],
)
@example(  # a DCA buy in one token leaves too little SOL for the next token's
    path=[(0, 89), (1, 89), (2, 89)],
    cuts=[],
    balances=[Decimal("1.5")],
)
@example(  # a stop-loss sale in one token pays for a DCA buy in another
    path=[(0, 140), (1, 89), (0, 60), (1, 79), (2, 70)],
    cuts=[],
    balances=[Decimal("0.2")],
)
@example(  # take profit level by level, then the moon bag's trail
    path=[(2, 160), (2, 260), (2, 420), (2, 520), (2, 300), (2, 150)],
    cuts=[2, 4],
    balances=[Decimal(5)],
)
async def test_chunks_do_what_single_ticks_do(
    path: list[tuple[int, int]], cuts: list[int], balances: list[Decimal]
) -> None:
    ticks = _ticks(path)
    one_by_one = _store(balances)
    single = await _run(one_by_one, ticks, list(range(1, len(ticks))))
    chunked = _store(balances)
    outcomes = await _run(chunked, ticks, cuts)
    assert _state(chunked) == _state(one_by_one)
    assert _summary(outcomes) == _summary(single)


async def test_a_tick_not_newer_than_an_earlier_one_of_the_chunk_does_nothing() -> None:
    store = _store([Decimal(5)])
    first, second = _ticks([(0, 50), (0, 99)])
    stale = PriceTick(TOKENS[0], Decimal(2), BOUGHT)
    # The newest first: the two after it are older, so they change nothing.
    outcomes = await handle_prices(
        store, [second, first, stale], configs=ConfigTexts(), trading=TRADING
    )
    assert [o.is_newer for o in outcomes] == [True, False, False]
    assert store.prices[TOKENS[0]] == (Decimal("0.99"), second.ts)
    assert outcomes[0].positions == 2 * len(CONFIGS)
    assert [o.positions for o in outcomes[1:]] == [0, 0]
    # -50% would have stopped every position out; it never ran.
    assert len(store.positions) == 2 * len(CONFIGS) * len(TOKENS) - 2  # the stale closes


async def test_only_loud_positions_are_locked_and_their_wallets_first() -> None:
    store = _store([Decimal(5)])
    # -0.5% on token 0, two hours after the buys: quiet for every config but the stale
    # closer with the band -5..5% (the default band is 1..10%).
    ts = NOW
    tick = PriceTick(TOKENS[0], Decimal("0.995"), ts)
    [outcome] = await handle_prices(store, [tick], configs=ConfigTexts(), trading=TRADING)
    stale_wallets = {f"sim_{n:04d}" for n in (12, 13)}
    assert set(store.locked_wallets) == stale_wallets
    assert {store.positions.get(i) for i in store.locked_positions} == {None}  # closed
    assert outcome.closes == {"stale_trade": 2}
    assert outcome.positions == 2 * len(CONFIGS)
