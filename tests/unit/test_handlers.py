"""`handle_signals` against the in-memory store (`tests.memory`): fan-out, decisions, buys, replay.

Prices: SOL at 100 USD, the token at 1 USD (0.01 SOL). An agent with 10 SOL and
randomisation off buys in the large tier: 2.0 SOL for 200 tokens, 2.000005 SOL debited with
the 0.000005 SOL network fee (no protocol fee).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.helpers.books import TOKEN_A as TOKEN
from tests.helpers.books import TOKEN_B as OTHER
from tests.helpers.books import TOKEN_C
from tests.memory import RecordingStore, add_agent, wallet_of
from worker.domain.fills import Fees
from worker.domain.ids import buy_transaction_id
from worker.domain.models import SOL_MINT, ExecutionStatus, Signal
from worker.handlers.signals import SignalOutcome, UnknownUser, handle_signals
from worker.settings import TradingSettings

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)
TRADING = TradingSettings(fees=Fees(Decimal("0.000005"), Decimal(0)))
FIXED = {"positionCalculator": {"randomization": {"enabled": False}}}
DEBIT = Decimal("2.000005")

SUCCESS, SKIPPED, FAILED = ExecutionStatus.SUCCESS, ExecutionStatus.SKIPPED, ExecutionStatus.FAILED


def _signal(user_id: uuid.UUID, token: str = TOKEN, key: str = "k-1", **kw: Any) -> Signal:
    return Signal(
        user_id=user_id,
        token_address=token,
        signal_type="Velocity (Dex Boost Detection)",
        idempotency_key=key,
        **{"created_at": NOW, "price_usd": Decimal(1), "signal_strength": 3, **kw},
    )


def _store(*agents: dict[str, Any], sol: Decimal = Decimal(10)) -> tuple[RecordingStore, uuid.UUID]:
    """A store with one user whose agents take `agents`' overrides; SOL at 100 USD."""
    store = RecordingStore(prices={SOL_MINT: (Decimal(100), NOW)})
    user_id = uuid.uuid4()
    for overrides in agents:
        add_agent(store, user_id, sol=sol, **{"config": FIXED, **overrides})
    return store, user_id


async def _handle(store: RecordingStore, *signals: Signal) -> list[SignalOutcome]:
    results = await handle_signals(store, signals, trading=TRADING)
    outcomes = [r for r in results if isinstance(r, SignalOutcome)]
    assert len(outcomes) == len(results)
    return outcomes


def _statuses(outcome: SignalOutcome) -> list[ExecutionStatus]:
    return [a.decision.status for a in outcome.outcomes]


async def test_fans_out_one_execution_per_agent_and_buys_for_each() -> None:
    store, user_id = _store({}, {}, {})
    [outcome] = await _handle(store, _signal(user_id))
    assert outcome.is_new_signal
    assert _statuses(outcome) == [SUCCESS] * 3
    assert len(store.executions) == len(store.swaps) == len(store.positions) == 3
    for agent in store.agents.values():
        wallet = wallet_of(agent)
        assert store.balances[(wallet, SOL_MINT)] == Decimal(10) - DEBIT
        assert store.balances[(wallet, TOKEN)] == Decimal(200)
        row = store.executions[(outcome.signal_id, agent.agent_id)]
        assert row.transaction_id == buy_transaction_id(user_id, "k-1", agent.agent_id)
    assert store.locked_users == [user_id]


async def test_a_redelivered_signal_writes_nothing_twice() -> None:
    store, user_id = _store({}, {})
    [first] = await _handle(store, _signal(user_id))
    before = (dict(store.balances), len(store.swaps), len(store.executions))
    [again] = await _handle(store, _signal(user_id))
    assert (again.signal_id, again.is_new_signal) == (first.signal_id, False)
    assert again.outcomes == []
    assert again.already_done == 2
    assert (dict(store.balances), len(store.swaps), len(store.executions)) == before
    assert store.locked_signals == [first.signal_id]


async def test_a_replay_decides_only_for_agents_without_an_execution() -> None:
    store, user_id = _store({})
    [first] = await _handle(store, _signal(user_id))
    late = add_agent(store, user_id, config=FIXED)
    [again] = await _handle(store, _signal(user_id))
    assert [a.agent_id for a in again.outcomes] == [late.agent_id]
    assert again.already_done == 1
    assert store.executions[(first.signal_id, late.agent_id)].status is SUCCESS


async def test_an_agent_created_after_a_signal_is_not_decided_for_it_on_a_redelivery() -> None:
    # An offset reset or a new consumer group delivers an old signal again after an agent was
    # created: the new agent did not exist when the signal was made, so it gets no
    # execution (not even a skipped one); the older agent's is not written twice.
    store, user_id = _store({"created_at": NOW - timedelta(days=1)})
    [first] = await _handle(store, _signal(user_id))
    newer = add_agent(store, user_id, config=FIXED, created_at=NOW + timedelta(seconds=1))
    before = (dict(store.balances), len(store.swaps), len(store.executions))
    [again] = await _handle(store, _signal(user_id))
    assert (again.outcomes, again.already_done) == ([], 1)
    assert (dict(store.balances), len(store.swaps), len(store.executions)) == before
    assert (first.signal_id, newer.agent_id) not in store.executions
    # A signal made from its creation on is decided for it, at its very moment too.
    [later] = await _handle(store, _signal(user_id, OTHER, "k-2", created_at=newer.created_at))
    assert sorted(a.agent_id for a in later.outcomes) == sorted(store.agents)
    assert store.executions[(later.signal_id, newer.agent_id)].status is SUCCESS


async def test_a_signal_made_before_an_agent_is_not_decided_for_it_on_its_first_delivery() -> None:
    # Live too (a signal arriving late, or dated by its publisher): the signal's time
    # decides, not when the worker happens to process it.
    store, user_id = _store(
        {"created_at": NOW - timedelta(seconds=1)}, {"created_at": NOW + timedelta(microseconds=1)}
    )
    older = min(store.agents.values(), key=lambda a: a.created_at or NOW)
    [outcome] = await _handle(store, _signal(user_id))
    assert [a.agent_id for a in outcome.outcomes] == [older.agent_id]
    assert list(store.executions) == [(outcome.signal_id, older.agent_id)]


async def test_the_stored_signal_time_decides_when_a_redelivery_carries_another() -> None:
    store, user_id = _store({"created_at": NOW - timedelta(days=1)})
    [first] = await _handle(store, _signal(user_id))
    add_agent(store, user_id, config=FIXED, created_at=NOW + timedelta(seconds=1))
    # The same key with a later created_at (a publisher's bug): still the stored signal.
    [again] = await _handle(store, _signal(user_id, created_at=NOW + timedelta(hours=1)))
    assert (again.signal_id, again.outcomes) == (first.signal_id, [])


async def test_a_config_over_the_cap_fails_that_agent_with_the_reason_and_others_trade() -> None:
    store, user_id = _store({}, {"config": {**FIXED, "notes": "x" * 2000}}, {})
    capped_trading = TradingSettings(fees=TRADING.fees, max_config_bytes=1024)
    big = next(a for a in store.agents.values() if "notes" in str(a.config_text))
    [outcome] = await handle_signals(store, [_signal(user_id)], trading=capped_trading)
    assert isinstance(outcome, SignalOutcome)
    reason = (
        "invalid trading_config: the stored config is 2,074 bytes, over the 1,024-byte cap "
        "(AGENT_CONFIG_MAX_BYTES)"
    )
    by_agent = {a.agent_id: a.decision for a in outcome.outcomes}
    assert by_agent.pop(big.agent_id).reason == reason
    assert store.executions[(outcome.signal_id, big.agent_id)].status is FAILED
    assert [d.status for d in by_agent.values()] == [SUCCESS, SUCCESS]
    [problem] = outcome.config_problems
    assert (problem.agent_id, problem.error) == (big.agent_id, reason)


async def test_an_unknown_user_is_an_outcome_and_writes_nothing() -> None:
    store, user_id = _store({})
    stranger = uuid.uuid4()
    results = await handle_signals(store, [_signal(stranger), _signal(user_id)], trading=TRADING)
    assert results[0] == UnknownUser(f"unknown user_id {stranger}: no such user")
    assert isinstance(results[1], SignalOutcome)
    assert list(store.signals) == [(user_id, "k-1")]


async def test_signals_of_one_batch_see_each_others_buys() -> None:
    store, user_id = _store({})
    first, second, other = await _handle(
        store,
        _signal(user_id, key="a"),
        _signal(user_id, key="b"),  # the same token: already held after the first
        _signal(user_id, OTHER, key="c"),
    )
    assert _statuses(first) == [SUCCESS]
    assert _statuses(second) == [SKIPPED]
    assert _statuses(other) == [SUCCESS]
    [agent] = store.agents.values()
    wallet = wallet_of(agent)
    # Two buys: the second sized from the balance the first left (8 SOL: the medium tier).
    assert store.balances[(wallet, SOL_MINT)] < Decimal(10) - DEBIT
    assert len(store.positions) == 2


async def test_each_agent_gets_its_own_decision_and_reason() -> None:
    store, user_id = _store(
        {},
        {"automated_trading_simulation": False},
        {"trading_mode": "live", "automated_trading_live": True},
        {"config": {**FIXED, "signals": {"minScore": 5}}},
    )
    [outcome] = await _handle(store, _signal(user_id))
    decisions = {a.agent_id: a.decision for a in outcome.outcomes}
    agents = list(store.agents.values())
    assert decisions[agents[0].agent_id].status is SUCCESS
    assert decisions[agents[1].agent_id].status is SKIPPED
    assert decisions[agents[2].agent_id].status is FAILED
    assert "live" in (decisions[agents[2].agent_id].reason or "")
    assert decisions[agents[3].agent_id].status is SKIPPED
    assert "5" in (decisions[agents[3].agent_id].reason or "")
    assert len(store.swaps) == 1


async def test_without_a_sol_price_every_buy_fails_and_nothing_moves() -> None:
    store, user_id = _store({}, {})
    del store.prices[SOL_MINT]
    [outcome] = await _handle(store, _signal(user_id))
    assert _statuses(outcome) == [FAILED, FAILED]
    assert all("SOL/USD" in (a.decision.reason or "") for a in outcome.outcomes)
    assert store.swaps == []
    assert all(v == Decimal(10) for v in store.balances.values())


async def test_a_signal_without_a_price_takes_the_latest_tick() -> None:
    store, user_id = _store({})
    store.prices[TOKEN] = (Decimal(2), NOW)
    [outcome] = await _handle(store, _signal(user_id, price_usd=None))
    assert _statuses(outcome) == [SUCCESS]
    [position] = store.positions.values()
    assert position.state.purchase_amount == Decimal(100)  # 2.0 SOL at 0.02 SOL per token


# --- any sequence of batches keeps the ledger exact ------------------------------------

MINTS = [TOKEN, OTHER, TOKEN_C]
CONFIGS = [
    FIXED,
    None,  # the defaults: randomised sizes
    {**FIXED, "purchaseLimits": {"maxOpenPositions": 1}},
    {**FIXED, "signals": {"minScore": 4}},
    # Buys of 3 SOL below 5 SOL: capped at the balance less minimumAgentBalance.
    {"positionCalculator": {"positionSizes": {"small": {"min": 3, "max": 3}}}},
]


@settings(max_examples=60, deadline=None)
@given(
    configs=st.lists(st.sampled_from(range(len(CONFIGS))), min_size=1, max_size=4),
    deposits=st.lists(st.decimals(Decimal("0.1"), Decimal(30), places=3), min_size=4, max_size=4),
    batches=st.lists(
        st.lists(
            st.tuples(
                st.sampled_from(range(len(MINTS))),
                st.integers(0, 5),  # idempotency key: repeats are redeliveries
                st.integers(1, 5),  # strength
            ),
            min_size=1,
            max_size=5,
        ),
        min_size=1,
        max_size=4,
    ),
)
# Every config once, a deposit at the kept minimum (0.5) and one just able to buy; one
# batch with a redelivery (key 0 twice) and a weak signal, then a second token for all.
@example(
    configs=[0, 1, 2, 3],
    deposits=[Decimal("0.5"), Decimal(6), Decimal(12), Decimal("0.6")],
    batches=[[(0, 0, 5), (0, 0, 5), (1, 1, 3)], [(2, 2, 4)]],
)
@example(
    configs=[4],
    deposits=[Decimal("3.4"), Decimal(0), Decimal(0), Decimal(0)],
    batches=[[(0, 0, 3), (1, 1, 3)]],
)
async def test_any_sequence_of_batches_keeps_the_ledger_exact(
    configs: list[int], deposits: list[Decimal], batches: list[list[tuple[int, int, int]]]
) -> None:
    store = RecordingStore(prices={SOL_MINT: (Decimal(100), NOW)})
    user_id = uuid.uuid4()
    agents = [
        add_agent(store, user_id, config=CONFIGS[c], sol=deposits[i], agent_id=uuid.UUID(int=i + 1))
        for i, c in enumerate(configs)
    ]
    first_seen: dict[str, tuple[int, int]] = {}
    for batch in batches:
        signals = []
        for mint, key, strength in batch:
            # A redelivery repeats its first message exactly.
            mint, strength = first_seen.setdefault(str(key), (mint, strength))
            signals.append(_signal(user_id, MINTS[mint], key=str(key), signal_strength=strength))
        await _handle(store, *signals)

    # One execution per (signal, agent), for every signal stored and every agent.
    assert set(store.executions) == {
        (stored.id, a.agent_id) for stored in store.signals.values() for a in agents
    }
    swaps_by_id = {s.id: s for s in store.swaps}
    for i, agent in enumerate(agents):
        wallet = wallet_of(agent)
        bought = [s for s in store.swaps if s.agent_id == agent.agent_id]
        rows = [r for (_, a), r in store.executions.items() if a == agent.agent_id]
        # Each success is one buy, each buy one success, and the SOL balance says so.
        assert sorted(str(r.transaction_id) for r in rows if r.status is SUCCESS) == sorted(
            str(s.id) for s in bought
        )
        spent = sum((s.input_amount + s.network_fee_sol + s.protocol_fee_sol for s in bought),
                    Decimal(0))  # fmt: skip
        assert store.balances[(wallet, SOL_MINT)] == deposits[i] - spent >= 0
        # At most one position per token, each backed by its buy, within the limit.
        held = store.open_positions_of(agent.agent_id)
        assert len(held) == len(bought)
        assert all(swaps_by_id[p.purchase_transaction_id].output_amount == p.state.purchase_amount
                   for p in held)  # fmt: skip
        if configs[i] == 2:
            assert len(held) <= 1
        for p in held:
            assert store.balances[(wallet, p.token_address)] == p.state.purchase_amount
        # Every decision that is not a success says why.
        assert all(r.error for r in rows if r.status is not SUCCESS)


async def test_a_buy_opens_its_position_in_the_opening_state_of_the_exit_rules() -> None:
    store, user_id = _store({}, {"config": {**FIXED, "stopLoss": {"enabled": False}}})
    await _handle(store, _signal(user_id))
    with_stop, without = (store.open_positions_of(a.agent_id)[0] for a in store.agents.values())
    assert with_stop.state.current_stop_loss_percentage == Decimal(-32)
    assert with_stop.state.peak_price == with_stop.state.lowest_price == Decimal("0.01")
    # No stop loss: no stop and no peak to trail (the low is tracked either way).
    assert (without.state.current_stop_loss_percentage, without.state.peak_price) == (None, None)
    assert without.state.lowest_price == Decimal("0.01")
    assert with_stop.state.purchase_amount == without.state.purchase_amount == Decimal(200)
    assert with_stop.state.total_invested_sol == DEBIT
