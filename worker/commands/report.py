"""`signal-worker report`: what the agents did, per agent: executions by status, trades, win
rate, realised and unrealised P/L, open positions, average hold, largest loss, balance.

A table on a terminal; `--format json` or `csv` for tools; `--chart FILE.png` draws each
agent's realised P/L (cumulative, a step and a marker at each exit) and its portfolio
balance (the hourly snapshots) over time (needs matplotlib, an optional extra: `make venv`
installs it; without it, --chart stops before anything runs, with one line saying so).
A second table gives the figures traders compare configs by (drawdown, profit factor,
expectancy, best and worst trade, median hold, Sharpe, Sortino). The figures are defined
in `worker.domain.results` and `worker.domain.performance`; `replay` prints the same
tables.
"""

from __future__ import annotations

import argparse
import csv
import io
from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple
from uuid import UUID

import orjson

from worker.commands.options import no_agent_message
from worker.commands.text import csv_text, printable
from worker.db.pool import connect_migrated
from worker.db.report import Curves, Filters, read_report
from worker.domain.performance import Performance
from worker.domain.results import STATUSES, AgentResult, ratio_text
from worker.errors import UsageError
from worker.settings import Settings

if TYPE_CHECKING:  # matplotlib is optional: imported when a chart is drawn
    from matplotlib.figure import Figure

MAX_PANELS = 12  # a chart draws the first dozen agents
COLUMNS = (
    "agent", "executions (ok/skip/fail)", "trades", "win %", "realised SOL", "realised %",
    "open", "unrealised SOL", "avg hold", "largest loss SOL", "SOL now",
)  # fmt: skip
# The second table (`worker.domain.performance` defines each figure).
FIGURE_COLUMNS = (
    "max drawdown SOL", "max drawdown %", "profit factor", "expectancy SOL", "best SOL",
    "worst SOL", "median hold", "Sharpe", "Sortino",
)  # fmt: skip


async def run(settings: Settings, args: argparse.Namespace) -> int:
    """Print the report; 0, or 1 when the filters match no agent."""
    if args.chart is not None:
        check_chart_support()
    conn = await connect_migrated(settings.db, timeout_s=settings.startup_timeout_s)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            report = await read_report(conn, Filters(args.agent, args.user, args.since))
    finally:
        await conn.close()
    if not report.results:
        raise UsageError(no_agent_message(args))
    rows = [("", r) for r in report.results]
    print(render(rows, args.format))
    if args.chart is not None:
        draw(args.chart, [(r.name, r.agent_id) for r in report.results], report.curves)
        print(f"report: chart written to {args.chart}")
    return 0


def render(
    rows: Sequence[tuple[str, AgentResult]],
    output: str,
    ranks: Sequence[int | None] | None = None,
) -> str:
    """The rows as a table, JSON or CSV; a row's label (a replay's config) prefixes its name,
    its rank (a replay's, `replay.ranks`) comes after the label.

    Names and labels are anybody's text (`worker.commands.text`): control characters are
    escaped in the table, formula-like cells neutralised in CSV; JSON escapes them itself."""
    labelled = any(label for label, _ in rows)
    if output == "json":
        return orjson.dumps(
            [
                {"label": label, **({"rank": rank} if ranks is not None else {}), **r.as_dict()}
                if labelled
                else r.as_dict()
                for (label, r), rank in zip(rows, ranks or [None] * len(rows), strict=True)
            ],
            option=orjson.OPT_INDENT_2,
        ).decode()
    if output == "csv":
        return _csv(rows, ranks, labelled=labelled)
    return _table(rows, ranks)


def _csv(
    rows: Sequence[tuple[str, AgentResult]],
    ranks: Sequence[int | None] | None,
    *,
    labelled: bool,
) -> str:
    """One value per cell: the executions by status in a column each."""
    lead = (["label"] if labelled else []) + (["rank"] if ranks is not None else [])
    lines: list[Sequence[object]] = []
    for n, (label, r) in enumerate(rows):
        d = csv_cells(r)
        if not lines:
            lines.append([*lead, *d])
        first = ([csv_text(label)] if labelled else []) + ([ranks[n]] if ranks is not None else [])
        lines.append([*first, *d.values()])
    return write_csv(lines)


def csv_cells(r: AgentResult) -> dict[str, object]:
    """A result as CSV cells, by column: `as_dict`'s, with `executions` as one column per
    status (`executions_success`, ...)."""
    d = r.as_dict()
    cells: dict[str, object] = {}
    for key, value in d.items():
        if key == "executions":
            cells.update({f"executions_{s}": r.executions.get(s, 0) for s in STATUSES})
        elif key == "name":
            cells[key] = csv_text(r.name)  # the only text cell besides the label
        elif key == "unpriced_tokens":
            # Last column, space-separated (addresses hold no space): the columns before it
            # are where they were.
            cells[key] = csv_text(" ".join(r.unpriced_tokens))
        else:
            cells[key] = "" if value is None else value
    return cells


def write_csv(lines: Sequence[Sequence[object]]) -> str:
    """Rows of cells as CSV (None as an empty cell); text cells must have gone through
    `csv_text` already."""
    out = io.StringIO()
    # RFC 4180's CRLF: a cell holding either a CR or an LF is then quoted (with "\n"
    # alone, a name with a bare CR would be written unquoted and end its row early).
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerows(["" if v is None else v for v in line] for line in lines)
    return out.getvalue().removesuffix("\r\n")


def _table(rows: Sequence[tuple[str, AgentResult]], ranks: Sequence[int | None] | None) -> str:
    """Two tables: what the agents did, then the figures traders compare configs by (with
    a replay's rank)."""
    lines: list[Sequence[str]] = [COLUMNS]
    figures: list[Sequence[str]] = [
        (COLUMNS[0], *(["rank"] if ranks is not None else []), *FIGURE_COLUMNS)
    ]
    for n, (label, r) in enumerate(rows):
        name = printable(f"{label}: {r.name}" if label else r.name)
        lines.append(
            (
                name,
                "/".join(str(r.executions.get(s, 0)) for s in STATUSES),
                str(r.trades),
                number_text(r.win_rate_pct),
                signed_text(r.realised_pnl_sol),
                signed_text(r.realised_pnl_pct),
                str(r.open_positions),
                signed_text(r.unrealised_pnl_sol),
                duration_text(r.avg_hold_s),
                number_text(r.largest_loss_sol),
                number_text(r.balance_sol),
            )
        )
        rank = [] if ranks is None else ["-" if ranks[n] is None else str(ranks[n])]
        figures.append((name, *rank, *figure_cells(r.figures)))
    return "\n".join([align(lines), *_unpriced_lines(rows), "", align(figures)])


def figure_cells(f: Performance) -> tuple[str, ...]:
    """The cells of `FIGURE_COLUMNS`."""
    return (
        number_text(f.max_drawdown_sol),
        number_text(f.max_drawdown_pct),
        number_text(f.profit_factor),
        signed_text(f.expectancy_sol),
        signed_text(f.best_trade_sol),
        signed_text(f.worst_trade_sol),
        duration_text(f.median_hold_s),
        number_text(f.sharpe),
        number_text(f.sortino),
    )


def align(lines: Sequence[Sequence[str]], left: int = 1) -> str:
    """Rows of cells (the header first) as a table: the first `left` columns aligned left,
    the others (numbers) right, two spaces apart."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join(
        "  ".join(
            cell.ljust(w) if i < left else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        ).rstrip()
        for line in lines
    )


def _unpriced_lines(rows: Sequence[tuple[str, AgentResult]]) -> list[str]:
    """Below the table, why an unrealised P/L is `-`: one line naming the held tokens
    without a price (and whose they are); none when every held token has one."""
    holders: dict[str, list[str]] = {}
    for label, r in rows:
        for token in r.unpriced_tokens:
            holders.setdefault(token, []).append(f"{label}: {r.name}" if label else r.name)
    if not holders:
        return []
    listed = "; ".join(f"{token} ({', '.join(names)})" for token, names in sorted(holders.items()))
    return [printable(f"unrealised -: no price for {listed}")]


def number_text(value: Decimal | None) -> str:
    """A number as plain text, `-` for none, `inf` for an infinite ratio."""
    return "-" if value is None else ratio_text(value)


def signed_text(value: Decimal | None) -> str:
    """A number with its sign (`+` for a gain), `-` for none."""
    if value is None:
        return "-"
    return ("+" if value > 0 else "") + ratio_text(value)


def duration_text(seconds: float | None) -> str:
    """A duration in its largest sensible unit (`45s`, `12m`, `3.5h`, `2.0d`), `-` for none."""
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def draw(path: Path, agents: Sequence[tuple[str, UUID]], curves: Curves) -> None:
    """The report's chart (`report_panels`) written to `path`."""
    draw_curves(path, report_panels(agents, curves))


def report_panels(agents: Sequence[tuple[str, UUID]], curves: Curves) -> list[Panel]:
    """Realised P/L (left: cumulative, a step at each exit, from 0 at the first trade's
    entry) and portfolio balance (right: the hourly snapshots) over time, a line per agent."""
    return [
        Panel("Realised P/L, cumulative (a marker per exit)",
              [(name, curves.realised.get(agent_id, [])) for name, agent_id in agents],
              starts_at_zero=True),
        Panel("Portfolio balance (hourly snapshots)",
              [(name, curves.balances.get(agent_id, [])) for name, agent_id in agents]),
    ]  # fmt: skip


def check_chart_support() -> None:
    """`UsageError` (exit 2) before anything runs when --chart cannot be drawn here."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError(CHART_NEEDS) from None


# matplotlib is an optional extra (the image and `make run-venv` do without it); `make venv`
# installs it with the development tools (requirements-dev.lock).
CHART_NEEDS = (
    "--chart needs matplotlib, which is not installed here: `make venv` installs it "
    "(or `pip install 'signal-worker[chart]'`)"
)
LONE_PAD = timedelta(minutes=30)  # each side of a single point in time
MARKERS_UP_TO = 2000  # points per line with a marker each; a line alone above


def time_limits(times: Sequence[datetime]) -> tuple[datetime, datetime] | None:
    """The x axis around the data: its span plus 10% each side (`LONE_PAD` around a single
    time), so a demo's trades seconds apart fill the panel, as do a year's, instead of
    sitting in matplotlib's default 4 years."""
    if not times:
        return None
    first, last = min(times), max(times)
    pad = (last - first) / 10 if last > first else LONE_PAD
    return first - pad, last + pad


def marker_size(points: int) -> float:
    """Markers that a few points show clearly and a thousand do not blot out."""
    if points <= 50:
        return 5.0
    if points <= 300:
        return 3.0
    return 1.5


class Panel(NamedTuple):
    """A chart's panel: a line per (label, points); `starts_at_zero`: each line's first
    point is where it starts from (0 at the first trade's entry), not a value: no marker."""

    title: str
    series: Sequence[tuple[str, Sequence[tuple[datetime, Decimal]]]]
    starts_at_zero: bool = False


def draw_curves(path: Path, panels: Sequence[Panel]) -> None:
    """The panels (`figure`) written to `path` (its ending says the format)."""
    check_chart_support()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = figure(panels)
    try:
        fig.savefig(path, dpi=100)
    except OSError as exc:
        raise UsageError(f"cannot write the chart to {path}: {exc.strerror}") from None
    except (ValueError, OverflowError) as exc:  # matplotlib: a time it cannot place
        raise UsageError(f"cannot draw the chart: {exc}") from None
    finally:
        plt.close(fig)


def figure(panels: Sequence[Panel]) -> Figure:
    """A panel per title (an agent, a measure), a step line per series in it with a marker
    at each point, the time axis around the data; the caller closes it (pyplot keeps it)."""
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    shown = list(panels)[:MAX_PANELS]
    cols = min(2, len(shown)) or 1
    rows = -(-len(shown) // cols) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(7 * cols, 4.2 * rows), squeeze=False)
    for ax in axes.flat[len(shown) :]:
        ax.set_visible(False)
    for ax, (title, series, starts_at_zero) in zip(axes.flat, shown, strict=False):
        times: list[datetime] = []
        for label, points in series:
            if points:
                xs = [x for x, _ in points]
                ys = [float(y) for _, y in points]
                line = ax.step(xs, ys, where="post", label=_short(label), linewidth=1.2)[0]
                skip = 1 if starts_at_zero else 0
                if len(points) - skip <= MARKERS_UP_TO:
                    ax.plot(xs[skip:], ys[skip:], linestyle="none", marker="o",
                            color=line.get_color(),
                            markersize=marker_size(len(points) - skip))  # fmt: skip
                times += xs
        ax.set_title(_short(title), fontsize=10)
        ax.set_ylabel("SOL")
        limits = time_limits(times)
        if limits is not None:
            # matplotlib.dates leaves these constructors unannotated.
            locator = mdates.AutoDateLocator()  # type: ignore[no-untyped-call]
            ax.xaxis.set_major_locator(locator)
            concise = mdates.ConciseDateFormatter(locator)  # type: ignore[no-untyped-call]
            ax.xaxis.set_major_formatter(concise)
            ax.set_xlim(*limits)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        else:
            ax.set_xticks([])
            ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes)
        ax.tick_params(axis="x", labelsize=8)
        if starts_at_zero:
            ax.axhline(0, color="grey", linewidth=0.8)
    fig.tight_layout()
    return fig


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
