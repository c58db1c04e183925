"""The figures traders compare configs by (issue 25, item 7) in `report` and in each
`replay --vary` variant, through the command line on a real database; the CSV with one value
per cell (item 6)."""

from __future__ import annotations

import csv
import io
import json
import statistics
from decimal import Decimal

import asyncpg
import pytest

from tests.helpers.cli import run_cli
from tests.helpers.kafka import Topics
from tests.helpers.services import Services
from tests.helpers.workers import worker_env
from tests.integration.test_report_replay import _trade

pytestmark = pytest.mark.integration

FIGURES = ("max_drawdown_sol", "max_drawdown_pct", "profit_factor", "expectancy_sol",
           "median_hold_s", "sharpe", "sortino", "best_trade_sol", "worst_trade_sol")  # fmt: skip


async def _exits(conn: asyncpg.Connection, name: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT h.profit_loss_sol AS pnl, "
        "       extract(epoch FROM h.sale_time - h.purchase_time)::float8 AS held "
        "  FROM agent_historical_swaps h JOIN agents a ON a.id = h.agent_id "
        " WHERE a.name = $1 ORDER BY h.sale_time",
        name,
    )


async def test_report_prints_the_figures_of_each_agents_trades(
    services: Services, db_url: str, topics: Topics, db_conn: asyncpg.Connection
) -> None:
    account = await _trade(db_conn)  # agent 0: one exit at a loss, agent 1: two
    env = worker_env(services, db_url, topics)
    done = await run_cli(env, "report", "--user", str(account.user_id), "--format", "json")
    assert done.code == 0, done.stderr
    rows = {r["name"]: r for r in json.loads(done.stdout)}
    for name in ("agent 0", "agent 1"):
        exits = await _exits(db_conn, name)
        pnls = [e["pnl"] for e in exits]
        assert pnls and all(p < 0 for p in pnls)
        lost = -sum(pnls)
        # From the 10 SOL deposited, the equity only falls: the drawdown is every loss.
        assert Decimal(rows[name]["max_drawdown_sol"]) == lost
        pct = Decimal(rows[name]["max_drawdown_pct"])
        assert pct == (lost * 100 / 10).quantize(Decimal("0.01")) > 0
        assert rows[name]["profit_factor"] == "0"  # losses only
        assert Decimal(rows[name]["expectancy_sol"]) == (-lost / len(pnls)).quantize(
            Decimal("0.00000001")
        )
        assert Decimal(rows[name]["best_trade_sol"]) == max(pnls)
        assert Decimal(rows[name]["worst_trade_sol"]) == min(pnls)
        median = statistics.median(e["held"] for e in exits)
        assert rows[name]["median_hold_s"] == round(median, 1)
        # The exits of one day: too few days for a daily ratio.
        assert (rows[name]["sharpe"], rows[name]["sortino"]) == (None, None)
    table = await run_cli(env, "report", "--user", str(account.user_id))
    assert table.code == 0, table.stderr
    results, figures = table.stdout.split("\n\n")
    assert figures.splitlines()[0].split()[:4] == ["agent", "max", "drawdown", "SOL"]
    assert [line.split()[:2] for line in figures.splitlines()[1:]] == [
        ["agent", "0"],
        ["agent", "1"],
    ]
    assert "executions (ok/skip/fail)" in results
    # CSV: one value per cell, the executions by status in a column each.
    done = await run_cli(env, "report", "--user", str(account.user_id), "--format", "csv")
    assert done.code == 0, done.stderr
    parsed = {r["name"]: r for r in csv.DictReader(io.StringIO(done.stdout))}
    wide = parsed["agent 0"]
    assert (wide["executions_success"], wide["executions_skipped"], wide["executions_failed"]) == (
        "2",
        "0",
        "0",
    )
    assert "executions" not in wide and all(field in wide for field in FIGURES)
    assert not any("/" in value for value in wide.values())


async def test_each_replay_variant_has_the_figures_and_a_rank(
    services: Services, db_url: str, topics: Topics, db_conn: asyncpg.Connection
) -> None:
    account = await _trade(db_conn)
    env = worker_env(services, db_url, topics)
    done = await run_cli(env, "replay", "--user", str(account.user_id), "--format", "json",
                         "--vary", "stopLoss.defaultPercentage=-4,-50")  # fmt: skip
    assert done.code == 0, done.stderr
    by = {(r["label"], r["name"]): r for r in json.loads(done.stdout)}
    for name in ("agent 0", "agent 1"):
        live, stored = by[("live", name)], by[("stored config", name)]
        # The stored config replayed makes the live trades: the same figures.
        assert {f: stored[f] for f in FIGURES} == {f: live[f] for f in FIGURES}
        assert Decimal(stored["max_drawdown_sol"]) > 0
        tight = by[("stopLoss.defaultPercentage=-4", name)]
        wide = by[("stopLoss.defaultPercentage=-50", name)]
        assert tight["profit_factor"] == "0" and Decimal(tight["max_drawdown_sol"]) > 0
        assert all(wide[f] is None for f in FIGURES)  # no exit at -50%
        # Ranked by P/L at the end, realised + unrealised (here all different): the -50%
        # stop sold nothing and holds both tokens at a loss, the -4% one sold both early.
        assert live["rank"] is None
        replayed = [stored, tight, wide]
        pnl = [Decimal(r["realised_pnl_sol"]) + Decimal(r["unrealised_pnl_sol"]) for r in replayed]
        assert len(set(pnl)) == 3
        assert [r["rank"] for r in replayed] == [1 + sum(q > p for q in pnl) for p in pnl]
        assert tight["rank"] == 1
    table = await run_cli(env, "replay", "--user", str(account.user_id),
                          "--vary", "stopLoss.defaultPercentage=-4,-50")  # fmt: skip
    assert table.code == 0, table.stderr
    figures = table.stdout.split("\n\n")[1].splitlines()
    assert figures[0].split()[:2] == ["agent", "rank"]
    assert "profit factor" in figures[0] and "Sortino" in figures[0]
    ranked = {line.split(": agent")[0]: line.split()[-10] for line in figures[1:5]}
    assert ranked == {
        "live": "-",
        **{label: str(by[(label, "agent 0")]["rank"]) for label in (
            "stored config", "stopLoss.defaultPercentage=-4", "stopLoss.defaultPercentage=-50")},
    }  # fmt: skip
