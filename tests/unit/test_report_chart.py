"""`report --chart` draws what a trader expects from a handful of trades and from a
thousand (issue 25, item 6), and says in one line what it needs when matplotlib is missing."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
import matplotlib.dates as mdates
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from worker.commands.report import LONE_PAD, figure, report_panels, time_limits
from worker.db.report import Curves

T0 = datetime(2026, 12, 7, 10, tzinfo=UTC)
AGENT = uuid.UUID(int=1)


def _curves(trades: int) -> Curves:
    """An agent with `trades` exits 7 minutes apart, +0.01 SOL each, from an entry at T0."""
    points = [(T0, Decimal(0))]
    points += [(T0 + timedelta(minutes=7 * n), Decimal(n) / 100) for n in range(1, trades + 1)]
    snapshot = [(T0.replace(minute=0), Decimal(10))]
    return Curves(balances={AGENT: snapshot}, realised={AGENT: points})


@pytest.fixture
def drawn() -> Iterator[list[Figure]]:
    figures: list[Figure] = []
    yield figures
    for fig in figures:
        plt.close(fig)


def _draw(drawn: list[Figure], trades: int) -> tuple[Axes, Axes]:
    fig = figure(report_panels([("Steady", AGENT)], _curves(trades)))
    drawn.append(fig)
    pnl, balance = fig.axes
    return pnl, balance


def _x_limits(ax: Axes) -> tuple[datetime, datetime]:
    low, high = ax.get_xlim()
    # matplotlib.dates leaves num2date unannotated.
    return mdates.num2date(low), mdates.num2date(high)  # type: ignore[no-untyped-call]


def _values(data: object) -> list[object]:
    return list(np.asarray(data, dtype=object).tolist())


def test_one_trade_is_a_step_from_zero_with_a_marker_on_an_axis_around_it(
    drawn: list[Figure],
) -> None:
    pnl, balance = _draw(drawn, 1)
    exit_at = T0 + timedelta(minutes=7)
    low, high = _x_limits(pnl)
    pad = timedelta(seconds=42)  # a tenth of the 7 minutes from entry to exit
    assert (low, high) == (T0 - pad, exit_at + pad)  # not matplotlib's 4 years
    step, markers = pnl.get_lines()[:2]
    assert _values(step.get_ydata()) == [0.0, 0.01]
    # A marker on the exit, none on the entry (a start, not a trade).
    assert markers.get_marker() == "o"
    assert _values(markers.get_xdata()) == [exit_at]
    # The one hourly snapshot sits in the middle of an hour, with its marker.
    low, high = _x_limits(balance)
    assert high - low == 2 * LONE_PAD
    assert balance.get_lines()[1].get_marker() == "o"


def test_a_thousand_trades_get_a_marker_each_on_an_axis_around_them(
    drawn: list[Figure],
) -> None:
    pnl, _ = _draw(drawn, 1000)
    span = timedelta(minutes=7 * 1000)
    low, high = _x_limits(pnl)
    assert (low, high) == (T0 - span / 10, T0 + span + span / 10)
    markers = pnl.get_lines()[1]
    assert len(_values(markers.get_xdata())) == 1000
    assert markers.get_markersize() < 2  # small enough not to blot out the line


def test_no_trade_says_no_data_yet(drawn: list[Figure]) -> None:
    fig = figure(report_panels([("Steady", AGENT)], Curves()))
    drawn.append(fig)
    assert [t.get_text() for t in fig.axes[0].texts] == ["no data yet"]


def test_time_limits_pad_the_data() -> None:
    assert time_limits([]) is None
    assert time_limits([T0]) == (T0 - LONE_PAD, T0 + LONE_PAD)
    ten_days = T0 + timedelta(days=10)
    assert time_limits([ten_days, T0]) == (T0 - timedelta(days=1), ten_days + timedelta(days=1))
    seconds = T0 + timedelta(seconds=20)  # a demo's trades: seconds apart
    assert time_limits([T0, seconds]) == (T0 - timedelta(seconds=2), seconds + timedelta(seconds=2))


@pytest.mark.parametrize("command", ["report", "replay"])
def test_without_matplotlib_chart_stops_first_with_one_line(command: str, tmp_path: Path) -> None:
    # matplotlib made unimportable; the database is never reached (an unused port).
    code = (
        "import sys; sys.modules['matplotlib'] = None; "
        "from worker.__main__ import main; sys.exit(main())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, command, "--chart", str(tmp_path / "c.png")],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
        env={"DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""  # no table first
    assert done.stderr.strip().splitlines() == [
        f"signal-worker {command}: --chart needs matplotlib, which is not installed here: "
        "`make venv` installs it (or `pip install 'signal-worker[chart]'`)"
    ]
