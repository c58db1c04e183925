"""`handle_prices` against the in-memory store (`tests.memory`): trails, exits, stale ticks.

One position per agent, bought at 1 USD per token with SOL at 100 USD: 200 tokens at
0.01 SOL for 2.000005 SOL (the 0.000005 SOL network fee), leaving 7.999995 SOL.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from tests.helpers.books import TOKEN_A as TOKEN
from tests.memory import RecordingStore, add_agent, held, open_position, pause, set_config
from worker.domain.config import resolve_config
from worker.domain.exit_rules import exit_rules
from worker.domain.models import SOL_MINT, CloseReason, PositionState, PriceTick
from worker.domain.records import OpenPosition
from worker.handlers.config_cache import ENTRY_OVERHEAD, ConfigTexts
from worker.handlers.ticks import TickOutcome, handle_prices
from worker.settings import Settings

BOUGHT = datetime(2026, 1, 1, 12, tzinfo=UTC)
TRADING = Settings().trading
INVESTED = Decimal("2.000005")
FEE = Decimal("0.000005")


def _position(
    store: RecordingStore,
    config: dict[str, Any] | None = None,
    *,
    stop: Decimal = Decimal(-32),
    rules: dict[str, Any] | None = None,
) -> OpenPosition:
    """An open position of a new agent (its stop at `stop`, opened with the exit rules of
    `rules` if given), with its wallet's balances."""
    agent = add_agent(store, config=config or {}, sol=Decimal(10) - INVESTED)
    rules_id = None
    if rules is not None:
        rule_set = exit_rules(resolve_config(rules))
        store.rule_sets[rule_set.id] = rule_set.json
        rules_id = rule_set.id
    state = PositionState(
        purchase_price=Decimal("0.01"),
        purchase_amount=Decimal(200),
        total_invested_sol=INVESTED,
        created_at=BOUGHT,
        current_stop_loss_percentage=stop,
        peak_price=Decimal("0.01"),
        lowest_price=Decimal("0.01"),
    )
    return open_position(store, agent, TOKEN, state, exit_rules_id=rules_id)


def _store() -> RecordingStore:
    return RecordingStore(prices={SOL_MINT: (Decimal(100), BOUGHT)})


async def _handle(
    store: RecordingStore, price_usd: str, ts: datetime, configs: ConfigTexts | None = None
) -> TickOutcome:
    tick = PriceTick(token_address=TOKEN, price_usd=Decimal(price_usd), ts=ts)
    return await _one(store, tick, configs if configs is not None else ConfigTexts())


async def _one(store: RecordingStore, tick: PriceTick, configs: ConfigTexts) -> TickOutcome:
    [outcome] = await handle_prices(store, [tick], configs=configs, trading=TRADING)
    return outcome


async def _tick(
    store: RecordingStore, price_usd: str, ts: datetime, configs: ConfigTexts | None = None
) -> dict[str, int]:
    return (await _handle(store, price_usd, ts, configs)).closes


async def test_a_quiet_tick_only_trails_the_peak_and_the_low() -> None:
    store = _store()
    p = _position(store)
    assert await _tick(store, "1.05", BOUGHT + timedelta(seconds=1)) == {}
    assert await _tick(store, "0.9", BOUGHT + timedelta(seconds=2)) == {}
    state = store.positions[p.id].state
    assert (state.peak_price, state.lowest_price) == (Decimal("0.0105"), Decimal("0.009"))
    assert state.current_stop_loss_percentage == Decimal(-32)
    assert store.swaps == []
    assert store.balances[(p.wallet_address, SOL_MINT)] == Decimal(10) - INVESTED


async def test_a_fall_through_the_stop_sells_everything_and_records_the_exit() -> None:
    store = _store()
    p = _position(store)
    assert await _tick(store, "0.67", BOUGHT + timedelta(seconds=1)) == {"stop_loss": 1}
    assert p.id not in store.positions
    [sale] = store.swaps
    assert (sale.input_mint, sale.input_amount, sale.output_mint) == (TOKEN, Decimal(200), SOL_MINT)
    # 200 tokens at 0.0067 SOL = 1.34 SOL, less the fee.
    assert (
        store.balances[(p.wallet_address, SOL_MINT)]
        == Decimal(10) - INVESTED + Decimal("1.34") - FEE
    )
    assert (p.wallet_address, TOKEN) not in store.balances  # the emptied row is gone
    [exit_row] = store.history
    assert exit_row.close_reason is CloseReason.STOP_LOSS
    assert exit_row.pnl.profit_loss_sol == Decimal("1.34") - FEE - INVESTED
    assert exit_row.sale_transaction_id == sale.id
    assert store.locked_wallets == [p.wallet_address]


async def test_a_tick_not_newer_than_the_stored_one_changes_nothing() -> None:
    store = _store()
    p = _position(store)
    ts = BOUGHT + timedelta(seconds=10)
    await _tick(store, "1.05", ts)
    before = held(store, p.id)
    assert await _tick(store, "0.5", ts - timedelta(seconds=1)) == {}  # older
    assert await _tick(store, "0.5", ts) == {}  # a redelivery of the same moment
    assert held(store, p.id) == before
    assert store.prices[TOKEN] == (Decimal("1.05"), ts)
    assert store.swaps == []


async def test_take_profit_sells_part_and_keeps_the_position() -> None:
    store = _store()
    p = _position(store, {"takeProfit": {"enabled": True}, "stopLoss": {"enabled": False}})
    assert await _tick(store, "1.6", BOUGHT + timedelta(seconds=1)) == {}  # +60%: level 1
    [sale] = store.swaps
    assert sale.is_take_profit
    assert sale.input_amount == 50  # 25% of 200
    state = store.positions[p.id].state
    assert state.remaining_amount == 150
    assert state.take_profit_levels_hit == 1
    assert store.balances[(p.wallet_address, TOKEN)] == 150


async def test_only_positions_that_automation_may_exit_are_evaluated() -> None:
    store = _store()
    paused = _position(store)
    live = _position(store)
    pause(store, paused.agent_id)
    assert await _tick(store, "0.5", BOUGHT + timedelta(seconds=1)) == {"stop_loss": 1}
    assert set(store.positions) == {paused.id}
    assert [c.position.id for c in store.history] == [live.id]


async def test_an_invalid_config_leaves_positions_with_the_rules_they_were_opened_with() -> None:
    store = _store()
    # Opened with a -60% stop, then the agent's config was broken by an edit.
    sixty, forty = ({"stopLoss": {"defaultPercentage": pct}} for pct in (-60, -40))
    wide = _position(store, {"stopLoss": {"mode": "sideways"}}, stop=Decimal(-60), rules=sixty)
    # Opened with a -40% stop, config broken too.
    broken = {"purchaseLimits": {"maxPurchasePerToken": "1e400"}}
    tight = _position(store, broken, stop=Decimal(-40), rules=forty)
    # Opened before rules were kept: the default -32% stop applies.
    legacy = _position(store, {"stopLoss": {"mode": "sideways"}})
    configs = ConfigTexts()
    # -50%: below -40% and -32%, above -60%.
    outcome = await _one(
        store,
        PriceTick(token_address=TOKEN, price_usd=Decimal("0.5"), ts=BOUGHT + timedelta(seconds=1)),
        configs,
    )
    assert outcome.closes == {"stop_loss": 2}
    assert set(store.positions) == {wide.id}
    assert {c.position.id for c in store.history} == {tight.id, legacy.id}
    # The wide one was still managed: its low trailed down.
    assert store.positions[wide.id].state.lowest_price == Decimal("0.005")
    # Each broken agent is reported once, with its reason.
    assert sorted(p.agent_id for p in outcome.config_problems) == sorted(
        [wide.agent_id, tight.agent_id, legacy.agent_id]
    )
    assert all(p.error for p in outcome.config_problems)


async def test_a_config_grown_over_the_cap_leaves_positions_with_their_rules() -> None:
    store = _store()
    # Opened with a -10% stop; then the agent's config grew past the cap (1,024 bytes here).
    ten = {"stopLoss": {"defaultPercentage": -10}}
    _position(store, {**ten, "notes": "x" * 2000}, stop=Decimal(-10), rules=ten)
    trading = Settings(agent_config_max_bytes=1024).trading
    ts = BOUGHT + timedelta(seconds=1)
    tick = PriceTick(token_address=TOKEN, price_usd=Decimal("0.85"), ts=ts)
    [outcome] = await handle_prices(store, [tick], configs=ConfigTexts(), trading=trading)
    assert outcome.closes == {"stop_loss": 1}  # -15%: through its -10% stop
    [problem] = outcome.config_problems
    assert problem.error is not None
    assert "over the 1,024-byte cap" in problem.error


async def test_rule_sets_a_full_cache_drops_still_apply_to_the_tick_that_read_them() -> None:
    store = _store()
    # Two positions opened with take profit on (the defaults have it off); both agents'
    # configs broken since, so the rules they were opened with exit them.
    for _ in range(2):
        _position(
            store, {"stopLoss": {"mode": "sideways"}}, rules={"takeProfit": {"enabled": True}}
        )
    # A cache with room for less than one rule set: whatever it is given, it drops.
    configs = ConfigTexts(rules_max_bytes=1)
    ts = BOUGHT + timedelta(seconds=1)
    tick = PriceTick(token_address=TOKEN, price_usd=Decimal("3"), ts=ts)
    outcome = await _one(store, tick, configs)
    # +200%: their take-profit levels sell (the defaults, wrongly applied, would not).
    assert outcome.partial_sales + sum(outcome.closes.values()) == 2


async def test_unknown_keys_are_reported_and_ignored() -> None:
    store = _store()
    p = _position(store, {"stopLoss": {"defaultPercentage": -10, "continuousTrailing": True},
                          "signals": {"minscore": 4}})  # fmt: skip
    outcome = await _one(
        store,
        PriceTick(token_address=TOKEN, price_usd=Decimal("0.85"), ts=BOUGHT + timedelta(seconds=1)),
        ConfigTexts(),
    )
    assert outcome.closes == {"stop_loss": 1}  # -15% through the agent's own -10% stop
    assert p.id not in store.positions
    [problem] = outcome.config_problems
    assert (problem.error, problem.unknown_keys) == (None, ("signals.minscore",))


async def test_without_a_sol_price_nothing_is_evaluated() -> None:
    store = RecordingStore()
    p = _position(store)
    assert await _tick(store, "0.5", BOUGHT + timedelta(seconds=1)) == {}
    assert held(store, p.id) == p
    assert store.prices[TOKEN][0] == Decimal("0.5")  # the price itself is stored


async def test_configs_are_read_once_per_agent_and_again_when_they_change() -> None:
    store = _store()
    configs = ConfigTexts()
    a, b = _position(store), _position(store)
    await _tick(store, "1.01", BOUGHT + timedelta(seconds=1), configs)
    await _tick(store, "1.02", BOUGHT + timedelta(seconds=2), configs)
    assert store.configs_read == [sorted([a.agent_id, b.agent_id])]
    # The agent's row changes (a tighter stop): its config is read again, and applies.
    set_config(store, b.agent_id, {"stopLoss": {"defaultPercentage": -1}})
    assert await _tick(store, "0.98", BOUGHT + timedelta(seconds=3), configs) == {"stop_loss": 1}
    assert store.configs_read[1:] == [[b.agent_id]]
    assert set(store.positions) == {a.id}


def test_the_config_cache_forgets_the_least_recent_versions_beyond_its_size() -> None:
    configs = ConfigTexts(max_bytes=2 * ENTRY_OVERHEAD + 5)  # room for two short texts
    configs.update({1: "{}", 2: None})
    configs.update({3: "{}"})
    assert configs.missing([1, 2, 3]) == [1]
    assert configs.missing([3, 4]) == [4]  # another version: read
    assert configs.text(2) is None


async def test_a_price_in_sol_no_column_holds_keeps_the_usd_price_and_moves_nothing() -> None:
    # SOL/USD at 1e-9 makes a 1,000 USD token 1e12 SOL: too large for numeric(30,18).
    store = RecordingStore(prices={SOL_MINT: (Decimal("0.000000001"), BOUGHT)})
    p = _position(store)
    outcome = await _handle(store, "1000", BOUGHT + timedelta(seconds=1))
    assert outcome.is_newer
    assert (outcome.positions, outcome.trailed, outcome.closes) == (0, 0, {})
    [skipped] = outcome.unstorable  # logged and counted after the commit
    assert (skipped.what, skipped.subject) == ("exits", TOKEN)
    assert skipped.reason.startswith("agent_positions.lowest_price would be 1000000000000")
    assert store.prices[TOKEN] == (Decimal(1000), BOUGHT + timedelta(seconds=1))
    assert held(store, p.id) == p


async def test_a_position_without_rules_keeps_its_agents_last_valid_config() -> None:
    # Opened before rule sets were kept (no exit_rules_id); its agent had turned stale-trade
    # closes off, then an edit broke the config. 62 minutes on, at a flat +5% (inside the
    # default stale band of 1..10%), the last valid config (stale off) applies, not the
    # defaults (stale on after 60 minutes), so the position stays open.
    store = _store()
    p = _position(store, {"staleTrade": {"enabled": False}})
    store.edit_agent(p.agent_id, BOUGHT + timedelta(minutes=1),
                     config_text=json.dumps({"stopLoss": {"mode": "sideways"}}))  # fmt: skip
    outcome = await _handle(store, "1.05", BOUGHT + timedelta(minutes=62))
    assert outcome.closes == {}
    assert p.id in store.positions
    [problem] = outcome.config_problems  # the broken config is still reported
    assert problem.error is not None


def _stop_edited_to_minus_50(store: RecordingStore) -> tuple[OpenPosition, datetime]:
    """A position without stored rules whose agent's -10% stop was edited to -50% a minute
    after the buy; the position and the edit's time."""
    p = _position(store, {"stopLoss": {"defaultPercentage": -10}}, stop=Decimal(-50))
    at = BOUGHT + timedelta(minutes=1)
    store.edit_agent(
        p.agent_id, at, config_text=json.dumps({"stopLoss": {"defaultPercentage": -50}})
    )
    return p, at


async def test_the_last_valid_config_is_the_latest_valid_one_before_the_broken_one() -> None:
    store = _store()
    # Versions: a -10% stop, then a -50% stop, then two broken edits.
    p, at = _stop_edited_to_minus_50(store)
    for broken in ({"stopLoss": {"mode": "sideways"}}, {"dca": {"maxDCACount": 0}}):
        store.edit_agent(p.agent_id, at, config_text=json.dumps(broken))
    # -40%: above the last valid -50% stop: nothing (the older -10% would have sold).
    assert await _tick(store, "0.6", BOUGHT + timedelta(minutes=2)) == {}
    # -55%: through it.
    assert await _tick(store, "0.45", BOUGHT + timedelta(minutes=3)) == {"stop_loss": 1}


async def test_the_last_valid_version_is_looked_for_once_per_broken_version() -> None:
    # A hostile history (50 broken versions before the one in force) is read once, not at
    # every chunk: afterwards only the valid version's text is needed.
    store = _store()
    p, at = _stop_edited_to_minus_50(store)
    for n in range(50):
        store.edit_agent(
            p.agent_id, at, config_text=json.dumps({"stopLoss": {"mode": f"sideways{n}"}})
        )
    looked_up: list[list[int]] = []
    earlier_versions = store.earlier_versions

    async def counted(version_ids: Sequence[int], limit: int) -> dict[int, list[int]]:
        looked_up.append(list(version_ids))
        return await earlier_versions(version_ids, limit)

    store.earlier_versions = counted  # type: ignore[method-assign]
    configs = ConfigTexts()
    for minutes, price in ((2, "0.6"), (3, "0.61"), (4, "0.62")):
        assert await _tick(store, price, BOUGHT + timedelta(minutes=minutes), configs) == {}
    assert len(looked_up) == 1  # the first chunk only
    # The last valid (-50%) still decides: through it, sold.
    assert await _tick(store, "0.45", BOUGHT + timedelta(minutes=5), configs) == {"stop_loss": 1}


async def test_a_position_without_rules_of_an_agent_never_valid_takes_the_defaults() -> None:
    store = _store()
    p = _position(store, {"stopLoss": {"mode": "sideways"}})
    assert await _tick(store, "1.05", BOUGHT + timedelta(minutes=62)) == {"stale_trade": 1}
    assert p.id not in store.positions
