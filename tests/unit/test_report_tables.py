"""`report` and `replay` tables that read (issue 25, items 6 and 7): one value per CSV cell,
the figures traders compare configs by in their own table, a replay's ranking, the help."""

from __future__ import annotations

import argparse
import csv
import io
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

from worker.__main__ import _parser
from worker.commands.replay import LIVE, ranks
from worker.commands.report import render
from worker.domain.results import AgentResult, Close, Holding, summarize

A, B = uuid.UUID(int=1), uuid.UUID(int=2)


def _result(agent: uuid.UUID, *pnls: str, name: str = "a") -> AgentResult:
    return summarize(
        agent,
        name,
        executions={"success": 2, "skipped": 1},
        closes=[
            Close(Decimal(p), Decimal(1), 60.0 * (n + 1), datetime(2026, 11, 1 + n, tzinfo=UTC))
            for n, p in enumerate(pnls)
        ],
        holdings=[],
        prices_sol={},
        balance_sol=Decimal(10),
        starting_sol=Decimal(10),
    )


def test_csv_has_one_value_per_cell_under_its_own_header() -> None:
    parsed = list(csv.DictReader(io.StringIO(render([("", _result(A, "1", "-0.5"))], "csv"))))
    row = parsed[0]
    assert (row["executions_success"], row["executions_skipped"], row["executions_failed"]) == (
        "2",
        "1",
        "0",
    )
    assert "executions" not in row
    assert not any("/" in value for value in row.values())
    assert row["max_drawdown_sol"] == "0.5"
    assert row["max_drawdown_pct"] == "4.55"  # 0.5 of the peak of 11
    assert row["profit_factor"] == "2"
    assert row["expectancy_sol"] == "0.25"
    assert (row["best_trade_sol"], row["worst_trade_sol"]) == ("1", "-0.5")
    assert row["median_hold_s"] == "90.0"
    assert list(row)[-1] == "unpriced_tokens"


def test_the_table_prints_the_figures_in_a_second_table() -> None:
    results, figures = render([("", _result(A, "1", "-0.5"))], "table").split("\n\n")
    header, line = figures.split("\n")
    assert header.split("  ")[0].strip() == "agent"
    for column in ("max drawdown SOL", "max drawdown %", "profit factor", "expectancy SOL",
                   "best SOL", "worst SOL", "median hold", "Sharpe", "Sortino"):  # fmt: skip
        assert column in header
    # Daily returns +1/10 and -0.5/11: mean 3/110, deviation 8/110, downside 1/(22 sqrt 2):
    # Sharpe 3/8 sqrt(365) = 7.16, Sortino 0.6 sqrt(730) = 16.21.
    assert line.split() == ["a", "0.5", "4.55", "2", "+0.25", "+1", "-0.5", "90s", "7.16", "16.21"]
    assert "executions (ok/skip/fail)" in results


def test_an_infinite_profit_factor_reads_inf_and_no_trade_reads_dash() -> None:
    table = render([("", _result(A, "1")), ("", _result(B, name="b"))], "table")
    figures = table.split("\n\n")[1].split("\n")
    assert figures[1].split()[1:4] == ["0", "0", "inf"]
    assert figures[2].split()[1:] == ["-"] * 9


def test_a_replay_ranks_each_agents_configs_by_realised_pnl_then_drawdown() -> None:
    rows = [
        (LIVE, _result(A, "1")),
        ("stored config", _result(A, "1")),
        ("x=1", _result(A, "2", "-1")),  # the same P/L, a deeper fall
        ("x=2", _result(A, "3")),
        ("x=3", _result(A, "1")),  # equal to the stored config: the same rank
        (LIVE, _result(B, "1", name="b")),
        ("stored config", _result(B, name="b")),  # no trade: 0 P/L, no drawdown
        ("x=1", _result(B, "-1", name="b")),
    ]
    assert ranks(rows) == [None, 2, 4, 1, 2, None, 1, 2]


def test_open_positions_count_in_the_rank_at_their_value_and_unvalued_ones_come_last() -> None:
    def holding(agent: uuid.UUID, pnl: str, price: str | None) -> AgentResult:
        return summarize(
            agent, "a", executions={},
            closes=[Close(Decimal(pnl), Decimal(1), 1.0, datetime(2026, 11, 1, tzinfo=UTC))],
            holdings=[Holding("T", Decimal(10), Decimal(1), Decimal(0))],
            prices_sol={} if price is None else {"T": Decimal(price)},
            balance_sol=None, starting_sol=Decimal(10),
        )  # fmt: skip

    rows = [
        ("stored config", holding(A, "0.5", "0.01")),  # +0.5 realised, -0.9 held: -0.4
        ("x=1", _result(A, "-0.3")),  # -0.3, nothing held
        ("x=2", holding(A, "2", None)),  # a held token without a price: after the others
        ("x=3", holding(A, "0.5", "0.2")),  # +0.5, +1 held: +1.5
    ]
    assert ranks(rows) == [3, 2, 4, 1]


def test_a_replays_rank_is_in_every_format() -> None:
    rows = [("stored config", _result(A, "1")), ("x=1", _result(A, "2"))]
    assert [r["rank"] for r in json.loads(render(rows, "json", ranks(rows)))] == [2, 1]
    parsed = list(csv.DictReader(io.StringIO(render(rows, "csv", ranks(rows)))))
    assert list(parsed[0])[:2] == ["label", "rank"]
    assert [r["rank"] for r in parsed] == ["2", "1"]
    figures = render(rows, "table", ranks(rows)).split("\n\n")[1].split("\n")
    assert figures[0].split()[:2] == ["agent", "rank"]
    assert [line.split(": a")[1].split()[0] for line in figures[1:]] == ["2", "1"]


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_no_help_shows_a_doubled_percent_sign() -> None:
    # argparse %-formats argument help strings (so "%%" there prints "%") but not a
    # description without "%(prog)": "%%" in one printed "SOL and %%".
    texts = {p.prog: p.format_help() for p in _parsers(_parser())}
    assert "%" in texts["signal-worker report"]  # the description's "SOL and %"
    assert [prog for prog, text in texts.items() if "%%" in text] == []
