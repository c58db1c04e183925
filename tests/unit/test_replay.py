"""The replay engine and its memory store, without services: order, variants, results."""

from __future__ import annotations

import gc
import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from tests.helpers.books import TOKEN_A, TOKEN_B
from worker.commands.replay import grid
from worker.domain.models import SOL_MINT, PriceTick, Signal
from worker.domain.records import AgentSetup
from worker.errors import UsageError
from worker.replay.engine import (
    Outcome,
    Start,
    Variant,
    check_variant,
    events_of,
    replay,
    replay_each,
)
from worker.replay.memory import MemoryStore
from worker.settings import Settings

T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)
USER = uuid.UUID(int=1)
FIXED = {"positionCalculator": {"randomization": {"enabled": False}}}


def _agent(n: int, config: dict[str, Any] | None) -> AgentSetup:
    return AgentSetup(
        USER,
        uuid.UUID(int=100 + n),
        f"agent {n}",
        f"sim_{n}",
        json.dumps(config) if config else None,
    )


def _signal(n: int, token: str, seconds: int, price: str = "1") -> Signal:
    return Signal(
        user_id=USER,
        token_address=token,
        signal_type="Velocity (Dex Boost Detection)",
        signal_strength=4,
        idempotency_key=f"s{n}",
        created_at=T0 + timedelta(seconds=seconds),
        price_usd=Decimal(price),
        id=n,
    )


def _tick(token: str, price: str, seconds: int) -> PriceTick:
    return PriceTick(token, Decimal(price), T0 + timedelta(seconds=seconds))


START = Start(
    [_agent(1, FIXED), _agent(2, {**FIXED, "stopLoss": {"defaultPercentage": -10}})],
    {uuid.UUID(int=101): Decimal(10), uuid.UUID(int=102): Decimal(10)},
    {SOL_MINT: (Decimal(100), T0 - timedelta(days=1))},
)
EVENTS = events_of(
    [_signal(1, TOKEN_A, 1), _signal(2, TOKEN_B, 2)],
    [_tick(TOKEN_A, "0.95", 10), _tick(TOKEN_A, "0.85", 20), _tick(TOKEN_B, "0.6", 30)],
)


async def test_the_stored_configs_trade_and_each_stop_fires_where_it_is_set() -> None:
    run = await replay(START, EVENTS, Variant("stored config"), Settings())
    store = run.store
    assert len(store.executions) == 4
    assert all(e.status.value == "success" for e in store.executions.values())
    closes = {(c.position.agent_id.int, c.position.token_address): at for c, at in store.closed}
    # Agent 2's -10% stop: A at -15% (the tick at 20 s), B at -40%; agent 1's -32%: B only.
    assert closes == {
        (102, TOKEN_A): T0 + timedelta(seconds=20),
        (102, TOKEN_B): T0 + timedelta(seconds=30),
        (101, TOKEN_B): T0 + timedelta(seconds=30),
    }
    [open_position] = store.positions.values()
    assert (open_position.row.agent_id.int, open_position.row.token_address) == (101, TOKEN_A)
    results = {r.agent_id.int: r for r in run.results()}
    # Every SOL move is a buy or a sale: SOL now + open positions at cost = start + realised.
    for agent_id, r in results.items():
        held = sum(
            (p.state.total_invested_sol for p in store.positions.values()
             if p.row.agent_id.int == agent_id),
            Decimal(0),
        )  # fmt: skip
        assert r.balance_sol is not None
        assert r.balance_sol + held == Decimal(10) + r.realised_pnl_sol
        assert run.curves[uuid.UUID(int=agent_id)][-1][1] == Decimal(10) + r.realised_pnl_sol
    assert (results[101].trades, results[102].trades) == (1, 2)
    assert results[101].open_positions == 1
    assert results[101].unrealised_pnl_sol is not None
    assert results[101].unrealised_pnl_sol < 0  # A at 0.85 below its buy


async def test_a_replay_decides_an_agent_only_for_signals_from_its_creation_on() -> None:
    # Agent 3 was created between the two signals: as live, the first is not its signal.
    late = replace(_agent(3, FIXED), created_at=T0 + timedelta(seconds=1, milliseconds=500))
    start = Start([*START.agents, late], {**START.sol, late.agent_id: Decimal(10)}, START.prices)
    run = await replay(start, EVENTS, Variant("stored config"), Settings())
    assert sorted((s, a.int) for s, a in run.store.executions) == [
        (1, 101), (1, 102), (2, 101), (2, 102), (2, 103),
    ]  # fmt: skip


async def test_a_variant_replaces_what_it_names_for_every_agent() -> None:
    tight = Variant("tight", {"stopLoss": {"defaultPercentage": -4}})
    run = await replay(START, EVENTS, tight, Settings())
    # Both agents now stop A out at the first tick (-5%).
    assert sorted(c.position.agent_id.int for c, at in run.store.closed
                  if c.position.token_address == TOKEN_A and at == T0 + timedelta(seconds=10)) == [
        101, 102,
    ]  # fmt: skip
    # The same signals, the same sizes: the variant changes exits, not the buys.
    stored = await replay(START, EVENTS, Variant("stored config"), Settings())
    buys = sorted(
        (s.agent_id, s.input_amount) for s in stored.store.swaps if s.input_mint == SOL_MINT
    )
    again = sorted(
        (s.agent_id, s.input_amount) for s in run.store.swaps if s.input_mint == SOL_MINT
    )
    assert buys == again


async def test_a_replay_is_the_same_each_time() -> None:
    first = await replay(START, EVENTS, Variant("stored config"), Settings())
    second = await replay(START, EVENTS, Variant("stored config"), Settings())
    assert first.store.balances == second.store.balances
    assert [r.as_dict() for r in first.results()] == [r.as_dict() for r in second.results()]


def test_events_run_in_time_order_ticks_first_at_equal_times() -> None:
    events = events_of(
        [_signal(1, TOKEN_A, 5), _signal(2, TOKEN_A, 1)],
        [_tick(TOKEN_A, "1", 5), _tick(TOKEN_B, "1", 5), _tick(TOKEN_A, "1", 0)],
    )
    kinds = [("tick", e.tick.token_address) if e.tick else ("signal", e.signal.id) for e in events]  # type: ignore[union-attr]
    assert kinds == [
        ("tick", TOKEN_A),
        ("signal", 2),
        ("tick", TOKEN_A),
        ("tick", TOKEN_B),
        ("signal", 1),
    ]


def test_a_variant_merges_its_overrides_over_the_stored_config() -> None:
    stored = json.dumps({"stopLoss": {"mode": "zones", "trailingLevels": [{"change": 5}]},
                         "dca": {"enabled": True}})  # fmt: skip
    variant = Variant("v", {"stopLoss": {"trailingLevels": [], "defaultPercentage": -5}})
    merged = json.loads(str(variant.config_text(stored)))
    assert merged == {
        "stopLoss": {"mode": "zones", "trailingLevels": [], "defaultPercentage": -5},
        "dca": {"enabled": True},
    }
    assert Variant("stored").config_text(stored) == stored
    assert json.loads(str(variant.config_text(None))) == {
        "stopLoss": {"trailingLevels": [], "defaultPercentage": -5}
    }


def test_a_variant_that_makes_a_config_invalid_is_one_clear_line() -> None:
    with pytest.raises(UsageError, match=r"^bad: for agent 'agent 1': .*defaultPercentage"):
        check_variant(Variant("bad", {"stopLoss": {"defaultPercentage": 5}}), START)


def test_vary_specs_make_the_grid_of_their_values() -> None:
    variants = grid(["stopLoss.mode=fixed,exponential", "takeProfit.enabled=true,false"])
    assert [v.label for v in variants] == [
        "stopLoss.mode=fixed takeProfit.enabled=true",
        "stopLoss.mode=fixed takeProfit.enabled=false",
        "stopLoss.mode=exponential takeProfit.enabled=true",
        "stopLoss.mode=exponential takeProfit.enabled=false",
    ]
    assert variants[1].overrides == {
        "stopLoss": {"mode": "fixed"},
        "takeProfit": {"enabled": False},
    }
    assert grid([]) == []
    [number] = grid(["stopLoss.defaultPercentage=-12.5"])
    assert number.overrides == {"stopLoss": {"defaultPercentage": Decimal("-12.5")}}


@pytest.mark.parametrize("spec", ["stopLoss.mode", "=fixed", "stopLoss.mode=", " = "])
def test_a_malformed_vary_spec_says_how_to_write_one(spec: str) -> None:
    with pytest.raises(UsageError, match="expected PATH=VALUE"):
        grid([spec])


# --- issue 20, item 12: the grid is capped, streamed, and refuses what it cannot mean ---


def test_a_grid_beyond_the_cap_is_refused_before_any_variant_is_made() -> None:
    values = ",".join(str(-n) for n in range(1, 101))
    with pytest.raises(UsageError, match=r"^--vary: a grid of 10,000 configs \(100 x 100\); "
                       r"a replay runs at most 64 configs"):  # fmt: skip
        grid([f"stopLoss.defaultPercentage={values}", f"takeProfit.moonBag.retainPercent={values}"])
    assert len(grid([f"stopLoss.defaultPercentage={','.join(['-5'] * 63)}"])) == 63


@pytest.mark.parametrize(
    ("specs", "error"),
    [
        (["stopLoss=5", "stopLoss.mode=fixed"],
         r"^--vary stopLoss and --vary stopLoss.mode: one is inside the other"),
        (["stopLoss.mode=fixed", "stopLoss={}"],
         r"^--vary stopLoss and --vary stopLoss.mode: one is inside the other"),
        (["stopLoss.mode=fixed", "stopLoss.mode=zones"], r"^--vary stopLoss.mode: given twice"),
        (["stopLoss..mode=fixed"], r"^--vary stopLoss..mode: an empty key"),
        (["a." * 30_000 + "b=1"], r"^--vary a\.a\.a.*\.\.\.: a path of 30,001 keys"),
        (["stopLoss.mode=" + "[" * 900 + "]" * 900], r"nested deeper than any config"),
    ],
)  # fmt: skip
def test_a_vary_that_cannot_be_one_config_is_one_line(specs: list[str], error: str) -> None:
    with pytest.raises(UsageError, match=error) as raised:
        grid(specs)
    assert "\n" not in str(raised.value)
    assert len(str(raised.value)) < 300


def test_a_misspelt_vary_path_is_refused_unless_unknown_keys_are_allowed() -> None:
    with pytest.raises(UsageError, match=r"^--vary stopLos.mode=fixed: no config has the "
                       r"key\(s\) stopLos \(misspelt\? --allow-unknown-keys"):  # fmt: skip
        grid(["stopLos.mode=fixed"])
    with pytest.raises(UsageError, match=r"no config has the key\(s\) stopLoss.mdoe"):
        grid(["stopLoss.mdoe=fixed,zones"])
    [variant] = grid(["stopLos.mode=fixed"], allow_unknown=True)
    assert variant.overrides == {"stopLos": {"mode": "fixed"}}
    # The source's legacy key is accepted, as `agents lint` accepts it.
    assert grid(["stopLoss.continuousTrailing=true"])


async def test_variants_are_run_one_at_a_time_and_no_run_is_kept() -> None:
    variants = grid(["stopLoss.defaultPercentage=-4,-10,-50"])
    outcomes: list[Outcome] = []
    async for outcome in replay_each(START, EVENTS, [Variant("stored config"), *variants],
                                     Settings()):  # fmt: skip
        gc.collect()
        # Between runs no store is alive: not the one just run, not the earlier ones.
        assert [o for o in gc.get_objects() if isinstance(o, MemoryStore)] == []
        outcomes.append(outcome)
    assert [o.variant.label for o in outcomes] == ["stored config", *(v.label for v in variants)]
    run = await replay(START, EVENTS, Variant("stored config"), Settings())
    assert [r.as_dict() for r in outcomes[0].results] == [r.as_dict() for r in run.results()]
    assert outcomes[0].executions == len(run.store.executions) == 4
    assert [o.results[1].trades for o in outcomes[1:]] == [2, 2, 0]


async def test_an_agent_whose_stored_config_is_invalid_replays_as_the_worker_runs_it() -> None:
    broken = AgentSetup(USER, uuid.UUID(int=103), "broken", "sim_3",
                        json.dumps({"stopLoss": {"defaultPercentage": 5}}))  # fmt: skip
    start = Start([*START.agents, broken], {**START.sol, broken.agent_id: Decimal(10)},
                  START.prices)  # fmt: skip
    assert check_variant(Variant("stored config"), start) == ["broken"]
    assert check_variant(Variant("v", {"stopLoss": {"defaultPercentage": -4}}), start) == ["broken"]
    run = await replay(start, EVENTS, Variant("stored config"), Settings())
    by = {r.name: r for r in run.results()}
    assert by["broken"].executions == {"failed": 2}
    assert by["agent 1"].trades == 1
