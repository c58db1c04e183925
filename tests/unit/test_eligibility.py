"""Eligibility: every rule, its outcome and its reason, and the order the rules apply in."""

from __future__ import annotations

import dataclasses
import json
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from worker.domain.config import resolve_config
from worker.domain.config_reading import ConfigReading, read_config
from worker.domain.eligibility import decide, decide_agent
from worker.domain.models import Decision, ExecutionStatus, Signal, Subscriber

MINT = "7GCihgDB8fe6KNjn2MYtkzZcRjQy3t9GHdC8uHYmW2hr"
OTHER_MINT = "DezXAZ8z7PnrnRJjz3wXBoRgixCa6xjnB7YaB1pPB263"
TYPE = "Velocity (Dex Boost Detection)"
SEED = b"seed"

SKIPPED = ExecutionStatus.SKIPPED
FAILED = ExecutionStatus.FAILED


def make_signal(**changes: Any) -> Signal:
    signal = Signal(
        user_id=uuid.UUID("6f1c0f3e-8a47-4d0c-9a51-2d7c1e0b9f11"),
        token_address=MINT,
        signal_type=TYPE,
        signal_strength=3,
        idempotency_key="k-1",
        created_at=datetime(2025, 1, 1, tzinfo=UTC),
        market_cap_usd=Decimal(1_000_000),
        liquidity_usd=Decimal(50_000),
        holder_count=1200,
        id=41,
    )
    return dataclasses.replace(signal, **changes)


def make_agent(**changes: Any) -> Subscriber:
    agent = Subscriber(
        agent_id=uuid.UUID("0b7f6f38-3f4e-4a55-9a3c-6a7f1d1f2e01"),
        trading_mode="simulation",
        automated_trading_simulation=True,
        automated_trading_live=True,
        wallet_address="sim_8d1b2c3a4f5e6d7c8b9a0f1e2d3c4b5a",
        sol_balance=Decimal(1),
        open_positions=0,
        holds_token=False,
    )
    return dataclasses.replace(agent, **changes)


def run(
    config: dict[str, Any] | None = None, *, signal: Signal | None = None, **agent: Any
) -> Decision:
    return decide(signal or make_signal(), make_agent(**agent), resolve_config(config), seed=SEED)


def test_buys_the_sized_amount_when_every_rule_passes() -> None:
    assert run() == Decision(ExecutionStatus.SUCCESS, size_sol=Decimal("0.1"))


@pytest.mark.parametrize(
    ("config", "signal_changes", "agent_changes", "status", "reason"),
    [
        pytest.param(
            None, {}, {"automated_trading_simulation": False},
            SKIPPED, "automated trading is off for simulation mode", id="automation-off",
        ),
        pytest.param(
            None, {}, {"trading_mode": "live", "automated_trading_live": False},
            SKIPPED, "automated trading is off for live mode", id="live-automation-off",
        ),
        pytest.param(
            None, {}, {"trading_mode": "paper"},
            FAILED, "trading mode 'paper' is not supported", id="unknown-mode",
        ),
        pytest.param(
            {"signals": {"minScore": 3}}, {"signal_strength": 2}, {},
            SKIPPED, "signal strength 2 is below minScore 3", id="strength",
        ),
        pytest.param(
            {"signals": {"allowedSignalTypes": ["Pump", "Hypersurge"]}}, {}, {},
            SKIPPED,
            "signal type 'Velocity (Dex Boost Detection)' is not in allowedSignalTypes "
            "('Pump', 'Hypersurge')",
            id="type",
        ),
        pytest.param(
            {"signals": {"allowedSignalTypes": [TYPE.lower()]}}, {}, {},
            SKIPPED,
            "signal type 'Velocity (Dex Boost Detection)' is not in allowedSignalTypes "
            "('velocity (dex boost detection)')",
            id="type-is-exact",
        ),
        pytest.param(
            {"signals": {"tokenFilterMode": "blacklist", "tokenList": [OTHER_MINT, MINT]}}, {}, {},
            SKIPPED, f"token {MINT} is on the agent's blacklist", id="blacklist",
        ),
        pytest.param(
            {"signals": {"tokenFilterMode": "whitelist", "tokenList": [OTHER_MINT]}}, {}, {},
            SKIPPED, f"token {MINT} is not on the agent's whitelist", id="whitelist",
        ),
        pytest.param(
            {"signals": {"marketCapMin": 2_000_000}}, {}, {},
            SKIPPED, "market cap 1000000 USD is below marketCapMin 2000000", id="mcap-min",
        ),
        pytest.param(
            {"signals": {"marketCapMax": 500_000}}, {}, {},
            SKIPPED, "market cap 1000000 USD is above marketCapMax 500000", id="mcap-max",
        ),
        pytest.param(
            {"signals": {"liquidityMin": 60_000.5}}, {}, {},
            SKIPPED, "liquidity 50000 USD is below liquidityMin 60000.5", id="liquidity-min",
        ),
        pytest.param(
            {"signals": {"liquidityMax": 40_000}}, {}, {},
            SKIPPED, "liquidity 50000 USD is above liquidityMax 40000", id="liquidity-max",
        ),
        pytest.param(
            {"signals": {"holderCountMin": 1201}}, {}, {},
            SKIPPED, "holder count 1200 is below holderCountMin 1201", id="holders-min",
        ),
        pytest.param(
            {"signals": {"holderCountMax": 1000}}, {}, {},
            SKIPPED, "holder count 1200 is above holderCountMax 1000", id="holders-max",
        ),
        pytest.param(
            {"signals": {"marketCapMin": 1}}, {"market_cap_usd": None}, {},
            SKIPPED, "the signal has no market cap but the agent sets marketCapMin", id="no-mcap",
        ),
        pytest.param(
            {"signals": {"liquidityMax": 1}}, {"liquidity_usd": None}, {},
            SKIPPED, "the signal has no liquidity but the agent sets liquidityMax", id="no-liq",
        ),
        pytest.param(
            {"signals": {"holderCountMax": 10}}, {"holder_count": None}, {},
            SKIPPED, "the signal has no holder count but the agent sets holderCountMax",
            id="no-holders",
        ),
        pytest.param(
            None, {}, {"trading_mode": "live"},
            FAILED, "live trading is not available in this worker", id="live",
        ),
        pytest.param(
            None, {}, {"wallet_address": None},
            FAILED, "the agent has no simulation wallet", id="no-wallet",
        ),
        pytest.param(
            None, {}, {"holds_token": True},
            SKIPPED, f"the agent already holds a position in token {MINT}", id="holds-token",
        ),
        pytest.param(
            None, {}, {"open_positions": 25},
            SKIPPED, "the agent has 25 open positions, at its maxOpenPositions limit of 25",
            id="position-limit",
        ),
        pytest.param(
            {"purchaseLimits": {"maxOpenPositions": 3}}, {}, {"open_positions": 7},
            SKIPPED, "the agent has 7 open positions, at its maxOpenPositions limit of 3",
            id="configured-position-limit",
        ),
        pytest.param(
            None, {}, {"sol_balance": Decimal("0.3")},
            SKIPPED, "SOL balance 0.3 is below minimumAgentBalance 0.5", id="balance",
        ),
        pytest.param(
            None, {}, {"sol_balance": None},
            SKIPPED, "SOL balance 0 is below minimumAgentBalance 0.5", id="no-balance-row",
        ),
        pytest.param(
            None, {}, {"sol_balance": Decimal("0.5")},
            FAILED, "SOL balance 0.5 leaves nothing to buy with above minimumAgentBalance 0.5",
            id="nothing-above-minimum",
        ),
        pytest.param(
            {"purchaseLimits": {"minimumAgentBalance": 0.1}}, {}, {"sol_balance": Decimal("0.15")},
            FAILED, "SOL balance 0.15 is below the position calculator's minimum balance 0.2",
            id="below-sizing-minimum",
        ),
    ],
)  # fmt: skip
def test_each_rule_gives_its_outcome_and_reason(
    config: dict[str, Any] | None,
    signal_changes: dict[str, Any],
    agent_changes: dict[str, Any],
    status: ExecutionStatus,
    reason: str,
) -> None:
    decision = run(config, signal=make_signal(**signal_changes), **agent_changes)
    assert decision == Decision(status, reason)


@pytest.mark.parametrize(
    ("config", "signal_changes"),
    [
        ({"signals": {"tokenFilterMode": "whitelist", "tokenList": [MINT]}}, {}),
        ({"signals": {"tokenFilterMode": "blacklist", "tokenList": [OTHER_MINT]}}, {}),
        ({"signals": {"allowedSignalTypes": [TYPE]}}, {}),
        ({"signals": {"minScore": 3}}, {}),
        ({"signals": {"marketCapMin": 1_000_000, "marketCapMax": 1_000_000}}, {}),
        ({"signals": {"holderCountMin": 1200, "holderCountMax": 1200}}, {}),
        ({"signals": {"liquidityMin": 50_000}}, {"market_cap_usd": None, "holder_count": None}),
        ({"purchaseLimits": {"maxOpenPositions": 3}}, {}),
    ],
)
def test_bounds_are_inclusive_and_unset_bounds_ignore_missing_metrics(
    config: dict[str, Any], signal_changes: dict[str, Any]
) -> None:
    decision = run(config, signal=make_signal(**signal_changes), open_positions=2)
    assert decision.is_success


def test_live_mode_uses_the_live_automation_flag() -> None:
    decision = run(trading_mode="live", automated_trading_simulation=False)
    assert decision == Decision(FAILED, "live trading is not available in this worker")


def test_filters_come_before_the_live_mode_failure() -> None:
    decision = run({"signals": {"minScore": 4}}, trading_mode="live")
    assert decision == Decision(SKIPPED, "signal strength 3 is below minScore 4")


def test_automation_comes_before_the_filters() -> None:
    decision = run({"signals": {"minScore": 4}}, automated_trading_simulation=False)
    assert decision.reason == "automated trading is off for simulation mode"


def test_missing_wallet_comes_before_holdings_and_balance() -> None:
    decision = run(wallet_address=None, holds_token=True, sol_balance=None)
    assert decision == Decision(FAILED, "the agent has no simulation wallet")


def test_holding_comes_before_the_position_limit_and_the_balance() -> None:
    decision = run(holds_token=True, open_positions=25, sol_balance=Decimal(0))
    assert decision.reason == f"the agent already holds a position in token {MINT}"


def test_position_limit_comes_before_the_balance() -> None:
    decision = run(open_positions=30, sol_balance=Decimal(0))
    assert decision.reason == "the agent has 30 open positions, at its maxOpenPositions limit of 25"


def test_success_is_deterministic_per_seed() -> None:
    agent = make_agent(sol_balance=Decimal(6))
    cfg = resolve_config(None)
    first = decide(make_signal(), agent, cfg, seed=b"a")
    assert first == decide(make_signal(), agent, cfg, seed=b"a")
    assert first.size_sol is not None
    assert Decimal("0.5") <= first.size_sol < Decimal(1)


# --- decide_agent: the stored config resolved -----------------------------------------------


def _read(config: object) -> Any:
    return read_config(None if config is None else json.dumps(config))


def test_decide_agent_resolves_the_stored_config() -> None:
    reading = _read({"signals": {"minScore": 5}})
    decision = decide_agent(make_signal(), make_agent(), reading, seed=SEED)
    assert decision == Decision(SKIPPED, "signal strength 3 is below minScore 5")


def test_decide_agent_fails_on_an_invalid_config() -> None:
    reading = _read({"signals": {"minScore": 6}})
    decision = decide_agent(make_signal(), make_agent(), reading, seed=SEED)
    assert decision == Decision(
        FAILED, "invalid trading_config: signals.minScore: Input should be less than or equal to 5"
    )


def test_decide_agent_fails_on_a_config_that_is_not_an_object() -> None:
    decision = decide_agent(make_signal(), make_agent(), _read("oops"), seed=SEED)
    assert decision == Decision(FAILED, "invalid trading_config: expected a JSON object, got str")


def test_decide_agent_fails_on_text_that_is_not_json_or_too_big_a_number() -> None:
    for text, reason in [
        ("{", "invalid trading_config: not JSON: Expecting property name enclosed in double "
              "quotes: line 1 column 2 (char 1)"),
        ('{"purchaseLimits": {"maxPurchasePerToken": 1e400}}',
         "invalid trading_config: purchaseLimits.maxPurchasePerToken: Input should be less "
         "than or equal to 1.7976931348623157E+308"),
        ("[" * 2000 + "]" * 2000,
         "invalid trading_config: not JSON this worker accepts: nested too deeply"),
    ]:  # fmt: skip
        decision = decide_agent(make_signal(), make_agent(), read_config(text), seed=SEED)
        assert decision == Decision(FAILED, reason)


def test_decide_agent_skips_an_agent_with_automation_off_whatever_its_config() -> None:
    agent = make_agent(automated_trading_simulation=False)
    decision = decide_agent(make_signal(), agent, _read({"signals": {"minScore": 6}}), seed=SEED)
    assert decision == Decision(SKIPPED, "automated trading is off for simulation mode")


def test_decide_agent_buys_with_defaults() -> None:
    assert decide_agent(make_signal(), make_agent(), _read(None), seed=SEED) == Decision(
        ExecutionStatus.SUCCESS, size_sol=Decimal("0.1")
    )


def test_decide_agent_draws_the_size_with_its_seed() -> None:
    # Balance 6: the medium tier's size is drawn from [0.5, 1.0) by the seed.
    agent = make_agent(sol_balance=Decimal(6))
    for seed in (b"a", b"b", b"c"):
        expected = decide(make_signal(), agent, resolve_config(None), seed=seed)
        assert decide_agent(make_signal(), agent, _read(None), seed=seed) == expected


def test_decide_agent_fails_on_a_reading_without_config_or_reason() -> None:
    decision = decide_agent(make_signal(), make_agent(), ConfigReading(None), seed=SEED)
    assert decision == Decision(FAILED, "invalid trading_config")
