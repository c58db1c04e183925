"""The results: a table on stdout, `docs/benchmarks.md` and the chart `docs/benchmarks.png`."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from benchmarks.catchup import CatchUp
from benchmarks.infra import Machine
from benchmarks.limits import LIMIT_FANOUT, RAW_SIGNALS_PER_BATCH, RAW_WRITERS, Rate
from benchmarks.relay import TARGET_RATIO, RelayRun, within_target
from benchmarks.scenarios import (
    FANOUTS,
    NAIVE_CONNECTIONS,
    Latency,
    RelayCost,
    ReplaySpeed,
    Scale,
    StopOut,
    Throughput,
    TickRate,
    TickTimes,
    median,
    percentile,
)

# Every row of the table, in order (the smoke test checks that each one is printed).
ROWS = (
    "throughput, fan-out 1",
    "throughput, fan-out 10",
    "throughput, fan-out 100",
    "throughput, fan-out 100, INFO logs",
    "events relay, fan-out 100: throughput on / off",
    "events relay: delay, commit to Kafka: p50/p99",
    "events relay: drain after the last commit",
    "throughput, fan-out 1,000",
    "peak memory (VmHWM)",
    "latency at rest, fan-out 10: p50/p99",
    "latency at rest, fan-out 1,000: p50/p99",
    "latency at rest, fan-out 10, ORDER_MARKERS on: p50/p99",
    "latency at 200 signals/s x 10: p50/p95/p99/max",
    "signal wait for prices at rest, fan-out 10: p50/p99",
    "signal wait for prices under load: p50/p99",
    "signal wait / send-to-commit, p99: at rest, under load",
    "tick over one token: nothing moves",
    "tick over one token: peaks move",
    "tick over one token: all stop out",
    "tick stopping out 100 positions, at rest: p50/p99",
    "ticks/s over 1,000 tokens",
    "ticks/s over 10,000 tokens",
    "replay in memory: executions/s, ticks/s",
    "catch-up of an hour's backlog",
    "catch-up: buys at their own time's prices",
    "limit: raw consume (aiokafka)",
    "limit: raw write (COPY)",
    "naive, 1 connection",
    "naive, 8 connections",
    "worker / COPY ceiling, fan-out 100",
    "worker / naive, fan-out 100",
    "disposable server: throughput, fan-out 100",
    "disposable server: raw write (COPY)",
    "disposable server: naive, 8 connections",
    "disposable server: worker / COPY, worker / naive",
)

TARGET_RATE = 10_000.0  # executions/s at fan-out 100
TARGET_P99_MS = 50.0  # at 200 signals/s x 10 agents
TARGET_REST_P99_MS = {10: 25.0, 1000: 150.0}  # one signal at a time, by fan-out
TARGET_NAIVE_RATIO = 10.0
TARGET_LIMIT_RATIO = 0.7
TARGET_TICK_MS = 100.0  # one tick over 10,000 positions, nothing moves
TARGET_TRAIL_MS = 200.0  # the same, every peak moves
TARGET_TICKS_PER_S = 5_000.0  # over 1,000 tokens x 10 positions
TARGET_MEMORY_MB = 200.0
TARGET_REPLAY_EXECUTIONS = 50_000.0  # per second, in memory
TARGET_REPLAY_TICKS = 20_000.0


@dataclass
class Disposable:
    """The secondary column: the same fan-out 100, COPY and naive runs on the local server
    with durability off."""

    pg_settings: dict[str, str]
    throughput: Throughput
    raw_write: Rate
    naive: Rate
    naive_connections: int


@dataclass
class Results:
    """Everything one run measured."""

    scale: Scale
    machine: Machine
    throughput: list[Throughput] = field(default_factory=list)
    info: Throughput | None = None
    memory: Throughput | None = None
    latency: Latency | None = None
    rest: list[Latency] = field(default_factory=list)
    rest_markers: Latency | None = None  # at rest, fan-out 10, the worker writing markers
    one_tick: TickTimes | None = None
    stop_out: StopOut | None = None
    tick_rates: list[TickRate] = field(default_factory=list)
    replay: ReplaySpeed | None = None
    load: Latency | None = None  # signals offered while ticks flow on every price partition
    catch_up: CatchUp | None = None
    relay: RelayCost | None = None  # fan-out 100 with the events relay off, then on
    disposable: Disposable | None = None
    raw_consume: Rate | None = None
    raw_write: Rate | None = None
    naive: dict[int, Rate] = field(default_factory=dict)
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    duration_s: float = 0.0

    def at(self, fanout: int) -> Throughput | None:
        """The WARNING-level throughput run at `fanout`."""
        return next((t for t in self.throughput if t.fanout == fanout), None)

    def lower_limit(self, fanout: int) -> float | None:
        """min(raw consume x fan-out, raw write) in executions/s."""
        if self.raw_consume is None or self.raw_write is None:
            return None
        return min(self.raw_consume.per_s * fanout, self.raw_write.per_s)

    def best_naive(self) -> float | None:
        """The fastest naive baseline, executions/s."""
        return max((r.per_s for r in self.naive.values()), default=None)


@dataclass(frozen=True)
class Row:
    """One line of the table."""

    measure: str
    figure: str
    target: str = ""
    verdict: str = ""
    details: str = ""


_T = TypeVar("_T")


def _measured(name: str, value: _T | None, row: Callable[[str, _T], Row]) -> Row:
    """`row(name, value)`, or a "not run" row when `value` was not measured."""
    return Row(name, "not run") if value is None else row(name, value)


def _verdict(ok: bool | None) -> str:
    return "" if ok is None else ("PASS" if ok else "MISS")


def _n(value: float, unit: str = "") -> str:
    if math.isnan(value):
        return "n/a"
    text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.1f}"
    return f"{text} {unit}".rstrip()


def _sum(values: Iterable[float | None]) -> float | None:
    """The sum, or None when one is not known."""
    known = list(values)
    return None if any(v is None for v in known) else sum(v for v in known if v is not None)


def _cpu(
    client_s: float | None, database_s: float | None, count: int, per: str, client: str = "worker"
) -> str:
    if not count or client_s is None:
        return ""
    db = "?" if database_s is None else f"{database_s / count * 1000:.2f}"
    return f"; CPU s per 1,000 {per}: {client} {client_s / count * 1000:.2f}, PostgreSQL {db}"


def _throughput_row(name: str, t: Throughput | None, target: float | None = None) -> Row:
    if t is None:
        return Row(name, "not run")
    ok = None if target is None else t.rate >= target
    rss = f"; VmHWM {t.peak_rss_kb / 1024:.0f} MB" if t.peak_rss_kb else ""
    topped = f" (+{t.topped_up:,} topped up)" if t.topped_up else ""
    details = (
        f"{t.success_pct:.0f}% success; {t.executions:,} executions of "
        f"{t.published:,} signals{topped} in {t.window_s:.1f}s; {t.users:,} users"
        f"{rss}{_cpu(t.worker_cpu_s, t.database_cpu_s, t.executions, 'executions')}"
    )
    return Row(
        name, _n(t.rate, "exec/s"), f">= {_n(target)}/s" if target else "", _verdict(ok), details
    )


def _rows(r: Results) -> dict[str, Row]:
    rows: dict[str, Row] = {}
    for fanout in FANOUTS:
        name = f"throughput, fan-out {fanout:,}"
        rows[name] = _throughput_row(name, r.at(fanout), TARGET_RATE if fanout == 100 else None)
    rows["throughput, fan-out 100, INFO logs"] = _throughput_row(
        "throughput, fan-out 100, INFO logs", r.info
    )
    _relay_rows(r, rows)
    name = "peak memory (VmHWM)"
    rows[name] = _memory_row(name, r)
    name = "latency at 200 signals/s x 10: p50/p95/p99/max"
    lat = r.latency if r.latency is not None and r.latency.latencies_ms else None
    rows[name] = _measured(name, lat, _latency_row)
    for fanout in (10, 1000):
        name = f"latency at rest, fan-out {fanout:,}: p50/p99"
        rest = next((x for x in r.rest if x.fanout == fanout and x.latencies_ms), None)
        rows[name] = _measured(name, rest, _rest_row)
    name = "latency at rest, fan-out 10, ORDER_MARKERS on: p50/p99"
    marked = r.rest_markers if r.rest_markers is not None and r.rest_markers.latencies_ms else None
    rows[name] = _measured(name, marked, _rest_row)
    _tick_rows(r, rows)
    name = "tick stopping out 100 positions, at rest: p50/p99"
    rows[name] = _measured(name, r.stop_out, _stop_out_row)
    for tokens in (1000, 10_000):
        name = f"ticks/s over {tokens:,} tokens"
        rate = next((x for x in r.tick_rates if x.tokens == tokens), None)
        rows[name] = _measured(name, rate, _tick_rate_row)
    if r.scale.quick:  # the quick scale's smaller runs, in the rows of the full ones
        tick_rows = ("ticks/s over 1,000 tokens", "ticks/s over 10,000 tokens")
        for name, rate in zip(tick_rows, r.tick_rates, strict=False):
            rows[name] = _tick_rate_row(name, rate)
        rest_rows = (
            "latency at rest, fan-out 10: p50/p99",
            "latency at rest, fan-out 1,000: p50/p99",
        )
        for name, rest in zip(rest_rows, r.rest, strict=False):
            if rest.latencies_ms:
                rows[name] = _rest_row(name, rest)
    name = "replay in memory: executions/s, ticks/s"
    rows[name] = _measured(name, r.replay, _replay_row)
    _wait_rows(r, rows)
    _catch_up_rows(r, rows)
    _limit_rows(r, rows)
    _disposable_rows(r, rows)
    return rows


def _relay_rows(r: Results, rows: dict[str, Row]) -> None:
    """The events relay's cost (fan-out 100 on against off), its delay and its drain."""
    names = (
        "events relay, fan-out 100: throughput on / off",
        "events relay: delay, commit to Kafka: p50/p99",
        "events relay: drain after the last commit",
    )
    cost = r.relay
    if cost is None or cost.on.relay is None:
        rows.update({name: Row(name, "not run") for name in names})
        return
    on, run = cost.on, cost.on.relay
    runs = ", ".join(f"{'on' if t.events else 'off'} {_n(t.rate, 'exec/s')}" for t in cost.runs)
    rows[names[0]] = Row(
        names[0],
        f"{cost.ratio:.2f}x",
        f">= {TARGET_RATIO:.2f}x",
        _verdict(within_target(cost.on_rate, cost.off_rate)),
        f"the same workload {len(cost.offs) + len(cost.ons)} times, in the order off, on, on, "
        f"off, a fresh database and topics each: {runs}; the ratio is of the means, "
        f"EVENTS_ENABLED=false {_n(cost.off_rate, 'exec/s')} "
        f"({sum(t.outbox_rows for t in cost.offs):,} outbox rows), "
        f"=true {_n(cost.on_rate, 'exec/s')} ({run.delivery.events:,} events published in "
        f"the first); with the drain, "
        f"{_n(on.executions / (on.window_s + run.drain_s), 'exec/s')} to the last event in Kafka"
        f"{_runs_cpu(cost.ons)} (on); {_runs_cpu(cost.offs)[2:]} (off)",
    )
    rows[names[1]] = _relay_delay_row(names[1], run)
    d = run.delivery
    rows[names[2]] = Row(
        names[2],
        f"{run.drain_s:.1f} s",
        details=f"{run.behind:,} events unpublished when the last record committed, none "
        f"after; the relay's gauge signal_worker_events_unpublished then "
        f"{run.unpublished_metric if run.unpublished_metric is not None else '?'}; "
        f"signal_worker_events_published_total {run.published_metric or 0:,} of "
        f"{d.events:,} outbox rows",
    )


def _runs_cpu(runs: list[Throughput]) -> str:
    """The CPU per 1,000 executions of `runs` together."""
    return _cpu(
        _sum(t.worker_cpu_s for t in runs),
        _sum(t.database_cpu_s for t in runs),
        sum(t.executions for t in runs),
        "executions",
    )


def _relay_delay_row(name: str, run: RelayRun) -> Row:
    d = run.delivery
    h = run.histogram
    check = (
        f"; the relay's signal_worker_event_delay_seconds (created_at to after the mark, "
        f"interpolated in its buckets) p50/p99 {_ms(h.quantile(0.5))} / {_ms(h.quantile(0.99))} ms"
        if h is not None and h.count
        else ""
    )
    return Row(
        name,
        f"{_n(percentile(d.delays_ms, 50))} / {_n(percentile(d.delays_ms, 99))} ms",
        details=f"the events topic read back: per event, its record's {run.timestamp_type} "
        f"(the relay's send) minus its outbox row's created_at (the effect transaction's "
        f"start, so an upper bound); {len(d.delays_ms):,} events of {d.events:,} outbox rows, "
        f"{d.records:,} records, {d.duplicates:,} duplicates, {d.missing:,} missing, "
        f"{d.unknown:,} unknown; max {_n(max(d.delays_ms, default=math.nan))} ms{check}",
    )


def _ms(seconds: float) -> str:
    return _n(seconds * 1000)


def _wait_figure(lat: Latency) -> str:
    w = lat.wait
    assert w is not None
    return f"{_ms(w.quantile(0.5))} / {_ms(w.quantile(0.99))} ms"


def _wait_details(lat: Latency) -> str:
    w = lat.wait
    assert w is not None
    return (
        f"the worker's signal_worker_signal_wait_seconds (read to released in event-time "
        f"order, interpolated in its buckets) over {w.count:,} signals, warm-up left out; "
        f"mean {_ms(w.mean)} ms; the same signals' send to commit p50/p99 "
        f"{_n(lat.pct(50))} / {_n(lat.pct(99))} ms"
    )


def _wait_rows(r: Results, rows: dict[str, Row]) -> None:
    """The time a signal waits for the prices before it, at rest and with ticks flowing."""
    name = "signal wait for prices at rest, fan-out 10: p50/p99"
    rest = next((x for x in r.rest if x.fanout == 10 and x.wait is not None and x.wait.count), None)
    if rest is None:
        rows[name] = Row(name, "not run")
    else:
        rows[name] = Row(
            name,
            _wait_figure(rest),
            details=f"the latency-at-rest run ({rest.rate:g} signals/s x {rest.fanout:,} "
            f"agents, no ticks): {_wait_details(rest)}",
        )
    name = "signal wait for prices under load: p50/p99"
    load = r.load if r.load is not None and r.load.wait is not None and r.load.wait.count else None
    if load is None:
        rows[name] = Row(name, "not run")
    else:
        rows[name] = Row(
            name,
            _wait_figure(load),
            details=f"{load.ticks_sent:,} ticks at {load.ticks_per_s:g}/s round-robin over "
            f"{load.tick_tokens:,} tokens (every price partition) while {load.rate:g} "
            f"signals/s x {load.fanout} agents buy those tokens for {load.duration_s:.0f}s "
            f"({len(load.latencies_ms):,} committed, {load.executions:,} executions): "
            f"{_wait_details(load)}",
        )
    name = "signal wait / send-to-commit, p99: at rest, under load"
    if rest is None or load is None:
        rows[name] = Row(name, "not run")
        return
    ratios = [
        x.wait.quantile(0.99) * 1000 / x.pct(99) if x.wait is not None else math.nan
        for x in (rest, load)
    ]
    rows[name] = Row(
        name,
        " / ".join(f"{v:.2f}" for v in ratios),
        details="the share of a signal's send-to-commit time (p99 against p99) spent waiting "
        "in the order for the prices before it",
    )


def _catch_up_rows(r: Results, rows: dict[str, Row]) -> None:
    names = ("catch-up of an hour's backlog", "catch-up: buys at their own time's prices")
    c = r.catch_up
    if c is None:
        for name in names:
            rows[name] = Row(name, "not run")
        return
    run = c.run
    closes = ", ".join(f"{n:,} {reason}" for reason, n in sorted(c.closes.items())) or "none"
    statuses = ", ".join(f"{n:,} {s}" for s, n in sorted(c.statuses.items()))
    readyz = ", ".join(f"{n} x {answer!r}" for answer, n in sorted(run.readyz.items()))
    wait = run.wait
    waited = (
        f"{_n(wait.quantile(0.5))} / {_n(wait.quantile(0.99))} s"
        if wait is not None and wait.count
        else "n/a"
    )
    rows[names[0]] = Row(
        names[0],
        f"{_n(c.rate, 'records/s')} ({run.seconds:.0f} s)",
        details=f"{c.span_s:,}s of event time up to now, published while no worker ran "
        f"(in {c.publish_s:.0f}s): {c.ticks:,} ticks of {c.tokens} tokens (random walks with "
        f"jumps), {c.sol_ticks:,} SOL/USD ticks, {c.signals:,} signals without a price to "
        f"{c.users} users x {c.agents // max(c.users, 1)} agents with exits (fixed, "
        f"exponential, zoned and custom stops, take profit, DCA, stale trade); "
        f"{c.records:,} records in {run.seconds:.1f}s from the worker's readiness "
        f"(start-up {run.startup_s:.1f}s before it) to every offset stored; executions "
        f"{statuses}; positions closed: {closes}; {c.take_profit_sales:,} take-profit "
        f"sales, {c.check.dca_buys:,} DCA buys; signal wait p50/p99 {waited}; late records "
        f"{run.late}; meanwhile /readyz answered {readyz}, consumer lag up to "
        f"{run.max_lag:,} records, order buffer up to {run.max_buffered:,} records",
    )
    check = c.check
    total = check.buys + check.dca_buys
    same = check.buys_at_own_time + check.dca_at_own_time
    pct = 100 * same / total if total else math.nan
    rows[names[1]] = Row(
        names[1],
        f"{pct:.1f}% ({same:,} of {total:,})" if total else "n/a (no buys)",
        "100%",
        _verdict(same == total) if total else "",
        f"each buy's price in SOL against the published stream's last tick of its token and "
        f"of SOL/USD at or before the signal's time: {check.buys_at_own_time:,} of "
        f"{check.buys:,} signal buys; DCA re-buys at their own time: "
        f"{check.dca_at_own_time:,} of {check.dca_buys:,}"
        + (f"; first other: {check.mismatch}" if check.mismatch else ""),
    )


def _replay_row(name: str, s: ReplaySpeed) -> Row:
    ok = s.executions_per_s >= TARGET_REPLAY_EXECUTIONS and s.ticks_per_s >= TARGET_REPLAY_TICKS
    return Row(
        name,
        f"{_n(s.executions_per_s)} / {_n(s.ticks_per_s)}",
        f">= {_n(TARGET_REPLAY_EXECUTIONS)} / {_n(TARGET_REPLAY_TICKS)}",
        _verdict(ok),
        f"a recorded stream (signals stored, ticks kept in the price history, read back by "
        f"replay's own reads), replayed in memory on one core: {s.executions:,} executions "
        f"(the agent mix, one user) in {s.signals_s:.2f}s; "
        f"{s.ticks:,} ticks over {s.positions:,} positions (10 per token, each tick moving "
        f"its positions' peaks) in {s.ticks_s:.2f}s",
    )


def _rest_row(name: str, lat: Latency) -> Row:
    target = TARGET_REST_P99_MS.get(lat.fanout)
    return Row(
        name,
        f"{_n(lat.pct(50))} / {_n(lat.pct(99))} ms",
        f"p99 <= {target:.0f} ms" if target else "",
        _verdict(lat.pct(99) <= target) if target else "",
        f"one signal at a time ({lat.rate:g}/s open loop) x {lat.fanout:,} agents for "
        f"{lat.duration_s:.0f}s: {len(lat.latencies_ms)} signals, {lat.executions:,} "
        f"executions; max {_n(lat.pct(100))} ms; send to commit seen by a poll every "
        f"{lat.poll_interval_ms:.1f} ms; to the transaction's start p50 "
        f"{_n(percentile(lat.to_txn_start_ms, 50))} ms",
    )


def _stop_out_row(name: str, s: StopOut) -> Row:
    return Row(
        name,
        f"{_n(s.pct(50))} / {_n(s.pct(99))} ms",
        "",
        "",
        f"{len(s.times_ms)} ticks half a second apart, each halving the price of a token "
        f"held by {s.positions:,} positions: {s.closed:,} positions sold and closed in all "
        f"(sale, balances, P/L row, delete); send to commit; max {_n(s.pct(100))} ms",
    )


def _disposable_rows(r: Results, rows: dict[str, Row]) -> None:
    names = [n for n in ROWS if n.startswith("disposable server")]
    d = r.disposable
    if d is None:
        for name in names:
            rows[name] = Row(name, "not run", details="" if name != names[0] else (
                "the headline server was given by DATABASE_URL; no second server measured"
            ))  # fmt: skip
        return
    settings = ", ".join(
        f"{k}={d.pg_settings.get(k, '?')}"
        for k in ("fsync", "synchronous_commit", "full_page_writes")
    )
    rows[names[0]] = _throughput_row(names[0], d.throughput)
    rows[names[0]] = Row(
        names[0], rows[names[0]].figure, details=f"{settings}; " + rows[names[0]].details
    )
    rows[names[1]] = _raw_write_row(names[1], d.raw_write)
    rows[names[2]] = _naive_row(names[2], d.naive)
    rows[names[3]] = Row(
        names[3],
        f"{d.throughput.rate / d.raw_write.per_s:.2f} / {d.throughput.rate / d.naive.per_s:.1f}x",
        details="the same ratios as above, on the disposable server",
    )


def _latency_row(name: str, lat: Latency) -> Row:
    figure = " / ".join(_n(lat.pct(q)) for q in (50, 95, 99, 100)) + " ms"
    starts = lat.to_txn_start_ms
    return Row(
        name,
        figure,
        f"p99 <= {TARGET_P99_MS:.0f} ms",
        _verdict(lat.pct(99) <= TARGET_P99_MS),
        f"{lat.rate} signals/s x {lat.fanout} agents for {lat.duration_s:.0f}s: "
        f"{lat.sent:,} sent, {len(lat.latencies_ms):,} committed, {lat.executions:,} "
        f"executions; {_n(lat.achieved_per_s)} exec/s done of "
        f"{lat.rate * lat.fanout:,} offered; send (CreateTime) to commit seen by a poll "
        f"every {lat.poll_interval_ms:.1f} ms; to the batch's transaction start "
        f"(executed_at) p50 {_n(percentile(starts, 50))} ms, p99 "
        f"{_n(percentile(starts, 99))} ms",
    )


def _tick_rate_row(name: str, tr: TickRate) -> Row:
    topped = f" (+{tr.topped_up:,} topped up)" if tr.topped_up else ""
    targeted = tr.tokens == 1000
    return Row(
        name,
        _n(tr.rate, "ticks/s"),
        f">= {_n(TARGET_TICKS_PER_S)}/s" if targeted else "",
        _verdict(tr.rate >= TARGET_TICKS_PER_S) if targeted else "",
        f"{tr.tokens:,} tokens, {tr.positions // tr.tokens} positions each; "
        f"{tr.ticks:,} ticks{topped} in {tr.window_s:.1f}s, each moving its "
        f"positions' peaks{_cpu(tr.worker_cpu_s, tr.database_cpu_s, tr.ticks, 'ticks')}",
    )


def _memory_row(name: str, r: Results) -> Row:
    """The highest VmHWM of every worker run (the target is about the worker, whatever the
    load), with the dedicated 10,000-agent run in the details."""
    runs = [t for t in (*r.throughput, r.info, r.memory) if t is not None and t.peak_rss_kb]
    if not runs or r.memory is None:
        return Row(name, "not run")
    worst = max(runs, key=lambda t: t.peak_rss_kb or 0)
    mb = (worst.peak_rss_kb or 0) / 1024
    m = r.memory
    return Row(
        name,
        _n(mb, "MB"),
        f"<= {TARGET_MEMORY_MB:.0f} MB",
        _verdict(mb <= TARGET_MEMORY_MB),
        f"the highest of all worker runs: {worst.label} ({worst.log_level}), "
        f"{worst.users * worst.fanout:,} agents; the run with one user of {m.fanout:,} "
        f"agents ({m.published} signals, fan-out {m.fanout:,}, {_n(m.rate)} exec/s): "
        f"{_n((m.peak_rss_kb or 0) / 1024)} MB",
    )


def _tick_rows(r: Results, rows: dict[str, Row]) -> None:
    names = (
        "tick over one token: nothing moves",
        "tick over one token: peaks move",
        "tick over one token: all stop out",
    )
    t = r.one_tick
    if t is None:
        for name in names:
            rows[name] = Row(name, "not run")
        return
    held = f"{t.positions:,} open positions in the token; send to commit"
    target = f"<= {TARGET_TICK_MS:.0f} ms"
    rows[names[0]] = Row(
        names[0],
        _n(t.flat_ms, "ms"),
        target,
        _verdict(t.flat_ms <= TARGET_TICK_MS),
        f"{held}; same price, newer ts: every position read and evaluated",
    )
    trail = median(t.trail_ms)
    rows[names[1]] = Row(
        names[1],
        _n(trail, "ms"),
        f"<= {TARGET_TRAIL_MS:.0f} ms",
        _verdict(trail <= TARGET_TRAIL_MS),
        f"{held}; median of {len(t.trail_ms)} ticks of +1% (max "
        f"{_n(max(t.trail_ms))} ms): every peak written",
    )
    rows[names[2]] = Row(
        names[2],
        _n(t.stop_ms, "ms"),
        "",
        "",
        f"{held}; price halves: {t.closed:,} positions sold and closed "
        "(sale, balances, P/L row, delete)",
    )


def _raw_consume_row(name: str, rc: Rate) -> Row:
    return Row(
        name,
        _n(rc.per_s, "records/s"),
        "",
        "",
        f"{rc.count:,} signal records in {rc.seconds:.1f}s, not decoded; "
        f"= {_n(rc.per_s * LIMIT_FANOUT)} exec/s at fan-out {LIMIT_FANOUT}",
    )


def _raw_write_row(name: str, rw: Rate) -> Row:
    return Row(
        name,
        _n(rw.per_s, "exec/s"),
        "",
        "",
        f"{rw.count:,} executions in {rw.seconds:.1f}s at fan-out {LIMIT_FANOUT}, "
        f"{RAW_WRITERS} connections: per execution 4 rows COPYed (execution, swap, position, "
        "token balance) + SOL debits + signal rows, one transaction per "
        f"{RAW_SIGNALS_PER_BATCH} signals"
        + _cpu(rw.client_cpu_s, rw.database_cpu_s, rw.count, "executions", "client"),
    )


def _naive_row(name: str, nv: Rate) -> Row:
    return Row(
        name,
        _n(nv.per_s, "exec/s"),
        "",
        "",
        f"{nv.count:,} executions in {nv.seconds:.1f}s at fan-out {LIMIT_FANOUT}; one "
        "transaction per agent execution, signals from memory"
        + _cpu(nv.client_cpu_s, nv.database_cpu_s, nv.count, "executions", "client"),
    )


def _limit_rows(r: Results, rows: dict[str, Row]) -> None:
    name = "limit: raw consume (aiokafka)"
    rows[name] = _measured(name, r.raw_consume, _raw_consume_row)
    name = "limit: raw write (COPY)"
    rows[name] = _measured(name, r.raw_write, _raw_write_row)
    for conns in NAIVE_CONNECTIONS:
        name = f"naive, {conns} connection{'s' if conns > 1 else ''}"
        rows[name] = _measured(name, r.naive.get(conns), _naive_row)
    worker = r.at(LIMIT_FANOUT)
    name = "worker / COPY ceiling, fan-out 100"
    lower = r.lower_limit(LIMIT_FANOUT)
    if worker is None or not lower:
        rows[name] = Row(name, "not run")
    else:
        ratio = worker.rate / lower
        others = ", ".join(
            f"fan-out {t.fanout:,}: {t.rate / lim:.2f}"
            for t in r.throughput
            if (lim := r.lower_limit(t.fanout))
        )
        rows[name] = Row(
            name,
            f"{ratio:.2f}",
            f">= {TARGET_LIMIT_RATIO}",
            _verdict(ratio >= TARGET_LIMIT_RATIO),
            f"min(raw consume x fan-out, raw write) = {_n(lower)} exec/s; {others}",
        )
    name = "worker / naive, fan-out 100"
    naive = r.best_naive()
    if worker is None or not naive:
        rows[name] = Row(name, "not run")
    else:
        ratio = worker.rate / naive
        rows[name] = Row(
            name,
            f"{ratio:.1f}x",
            f">= {TARGET_NAIVE_RATIO:.0f}x",
            _verdict(ratio >= TARGET_NAIVE_RATIO),
            f"against the faster naive run ({_n(naive)} exec/s)",
        )


def table(r: Results) -> str:
    """The table as fixed-width text: measure, figure, target, verdict; details below."""
    rows = _rows(r)
    ordered = [rows[name] for name in ROWS]
    widths = [
        max(len(getattr(row, col)) for row in ordered) for col in ("measure", "figure", "target")
    ]
    header = f"{'measure':<{widths[0]}}  {'figure':>{widths[1]}}  {'target':<{widths[2]}}  "
    lines = [header + "verdict", "-" * (len(header) + 7)]
    if r.scale.quick:
        lines.insert(
            0,
            "--quick: a tiny scale to check that everything runs; the verdicts "
            "mean nothing at it\n",
        )
    lines.extend(
        f"{row.measure:<{widths[0]}}  {row.figure:>{widths[1]}}  "
        f"{row.target:<{widths[2]}}  {row.verdict}".rstrip()
        for row in ordered
    )
    lines.append("")
    lines.extend(f"{row.measure}: {row.details}" for row in ordered if row.details)
    return "\n".join(lines)


def markdown(r: Results, chart: str | None) -> str:
    """`docs/benchmarks.md`: machine, versions, settings, method, the table, the chart."""
    m = r.machine
    rows = _rows(r)
    pg = ", ".join(f"`{k}={v}`" for k, v in sorted(m.pg_settings.items()))
    lines = [
        "# Benchmarks",
        "",
        f"Measured by `python -m benchmarks{' --quick' if r.scale.quick else ''}` "
        f"(`make bench`) on {r.started:%Y-%m-%d %H:%M} UTC in {r.duration_s / 60:.1f} "
        "minutes, against the real local Kafka and PostgreSQL. Every figure below is "
        "regenerated by that command; this file and `benchmarks.png` are its output.",
        "",
        "## Machine and versions",
        "",
        "| | |",
        "|---|---|",
        f"| CPU | {m.cpu}, {m.cores} cores (shared by Kafka, PostgreSQL, the worker and "
        "the benchmark) |",
        f"| RAM | {m.ram_gb:.1f} GB |",
        f"| OS | {m.os} |",
        f"| Python | {m.python} |",
        f"| Kafka | {m.kafka} (single KRaft broker, local) |",
        f"| PostgreSQL | {m.postgres} |",
        f"| aiokafka / asyncpg | {m.aiokafka} / {m.asyncpg} |",
        f"| PostgreSQL settings | {pg} |",
        "| Worker settings | defaults: `DB_POOL_MAX_SIZE=10`, `KAFKA_FETCH_MAX_RECORDS=500`, "
        "12 partitions per topic, `LOG_FORMAT=json`, `LOG_LEVEL=WARNING` unless said |",
        "",
        "## Results",
        "",
        "| measure | figure | target | verdict |",
        "|---|---:|---|---|",
    ]
    for name in ROWS:
        row = rows[name]
        lines.append(f"| {row.measure} | {row.figure} | {row.target} | {row.verdict} |")
    lines += ["", "Details:", ""]
    lines += [f"- **{rows[n].measure}**: {rows[n].details}" for n in ROWS if rows[n].details]
    if chart:
        lines += ["", f"![throughput by fan-out, commit curves, latency]({chart})"]
    lines += ["", _notes(r)]
    return "\n".join(lines) + "\n"


def chart(r: Results, path: Path) -> None:
    """Throughput by fan-out against the limits, commit curves, and the latency CDF."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(17, 5.2))
    runs = [t for t in r.throughput if t.rate > 0]
    labels = [f"{t.fanout:,}" for t in runs]
    ax1.bar(labels, [t.rate for t in runs], color="#4c72b0", label="worker (WARNING logs)")
    if r.info is not None:
        ax1.bar(
            [f"{r.info.fanout} INFO"], [r.info.rate], color="#8172b2", label="worker, INFO logs"
        )
    for value, style, color, text in (
        (r.raw_write.per_s if r.raw_write else None, "--", "#dd8452", "raw write (COPY)"),
        (r.best_naive(), ":", "#55a868", "naive (best)"),
        (TARGET_RATE, "-.", "#555555", "target at fan-out 100"),
    ):
        if value:
            ax1.axhline(
                value, linestyle=style, color=color, linewidth=1.2, label=f"{text}: {value:,.0f}/s"
            )
    ax1.set_yscale("log")
    values = [t.rate for t in runs] + [TARGET_RATE]
    values += [v for v in (r.raw_write.per_s if r.raw_write else None, r.best_naive()) if v]
    ax1.set_ylim(min(values) / 1.5, max(values) * 6)
    ax1.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax1.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax1.yaxis.set_minor_formatter(ticker.NullFormatter())
    ax1.set_xlabel("agents per signal (fan-out)")
    ax1.set_ylabel("executions committed per second")
    ax1.set_title("Throughput by fan-out")
    ax1.legend(fontsize=8, loc="upper left")
    for t in [*r.throughput, *([r.info] if r.info else [])]:
        xs = [x for x, _ in t.curve]
        ys = [y for _, y in t.curve]
        ax2.step(
            xs, ys, where="post", label=f"fan-out {t.fanout:,}{' INFO' if t is r.info else ''}"
        )
    ax2.set_xlabel("seconds since the start (gate opened)")
    ax2.set_ylabel("executions committed")
    ax2.set_title("Commits over time (a step = a batch's transaction)")
    ax2.legend(fontsize=8)
    if r.latency is not None and r.latency.latencies_ms:
        values = sorted(r.latency.latencies_ms)
        cdf = [(i + 1) / len(values) * 100 for i in range(len(values))]
        ax3.plot(values, cdf, color="#c44e52")
        for q in (50, 95, 99):
            ax3.axvline(r.latency.pct(q), linestyle=":", color="#c44e52", linewidth=1)
            ax3.annotate(
                f"p{q} {r.latency.pct(q):,.0f} ms",
                (r.latency.pct(q), q),
                fontsize=8,
                xytext=(3, -10),
                textcoords="offset points",
            )
        ax3.axvline(TARGET_P99_MS, linestyle="-.", color="#555555", linewidth=1)
        ax3.annotate("target p99", (TARGET_P99_MS, 5), fontsize=8)
        ax3.set_xscale("log")
        ax3.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax3.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax3.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax3.set_xlabel("send to commit, ms")
        ax3.set_ylabel("% of signals")
        ax3.set_title(f"Latency at {r.latency.rate}/s x {r.latency.fanout} agents")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _notes(r: Results) -> str:
    s = r.scale
    pg = r.machine.pg_settings
    durability = ", ".join(
        f"`{k}={pg.get(k, '?')}`" for k in ("fsync", "synchronous_commit", "full_page_writes")
    )
    tokens = " and ".join(f"{n:,}" for n in s.tick_tokens)
    return f"""## How it is measured

**The server.** The headline figures come from a PostgreSQL server started for the run
(`benchmarks/durable.py`: a fresh cluster on this machine's disk, deleted afterwards) with
{durability}: every commit waits for its WAL flush, as on a production server. The worker,
the COPY ceiling and the naive baselines all run on it. The rows marked "disposable
server" repeat fan-out 100, COPY and the faster naive baseline on the local development
server of `make services`, which has those three settings off. `BENCH_DATABASE_URL`
measures a server of your own instead.

Each scenario gets a database of its own, cloned from a template with `schema/*.sql`
applied by `worker.db.migrations`, and topics of its own (12 partitions); everything is
dropped at the end. The worker runs as a subprocess, `python -m worker run`, with its
default settings. Commits are read from `consumer_offsets`: the worker stores each
partition's next offset in the same transaction as the batch's rows, so a stored offset
past a record means that record's rows are committed.

- **Agents**: funded simulation agents (1,000,000 SOL) whose stored configs are whole, as
  a UI writes them (every section, about 1-1.2 KB of JSON, `maxOpenPositions` 1000), in a
  fixed mix, round-robin over all agents: 16 in 20 buy (four temperaments: the defaults;
  exponential stop with aggressive take profit and DCA; zoned stop; a custom stop ladder
  with take profit), 2 skip (a minimum score above the signal's), 1 skips (a whitelist
  without the token) and 1 fails (live mode). So about 80% of executions are `success`
  (each writes a swap, a position, a token balance and the execution, and debits SOL) and
  20% are `skipped`/`failed` (the execution only), at every fan-out. The COPY ceiling and
  the naive baseline write the same mix.
- **Throughput**: signals round-robin over groups of 12 users (a new group after
  {s.signals_per_user} signals per user), each for a token of its own with `price_usd`
  set, SOL/USD in `token_prices`. The backlog is published before the worker starts,
  sized for ~{s.window_s:.0f} s at an expected rate, and topped up while it runs only if
  it would run dry before {s.window_s:.0f} s. The window runs from the worker's readiness
  to the commit of the backlog's last record, found by polling every 50 ms. CPU seconds
  are read from /proc for the worker and for the PostgreSQL backends of the scenario's
  database.
- **Events relay**: fan-out 100 four times, the same workload on a fresh database and
  topics each, in the order off, on, on, off (a drift of the machine during the runs
  weighs on both sides alike): the worker with `EVENTS_ENABLED=false` (no outbox rows, no
  relay) or `=true`; the ratio is of the means, on / off. With it on, after the window the worker
  runs on until no outbox row is unpublished (the drain, timed from the last record's
  commit), then the events topic is read back whole and each event's delay is its
  record's Kafka timestamp (CreateTime: the relay's send) minus its outbox row's
  `created_at` (the effect transaction's `now()`, its start: an upper bound of the delay
  from the commit); the relay's own `signal_worker_event_delay_seconds` is given beside
  it (interpolated within buckets up to 30-60 s wide, it is only a check).
- **Latency**: open loop, by a producer with `linger_ms=0`, after a warm-up. Per signal:
  from its Kafka CreateTime (set at send, same clock) to the first poll of
  `consumer_offsets` (every few ms, the interval is in the details) that shows its
  partition's offset past it: an upper bound of the commit time by at most one poll
  interval. *At rest*: {s.rest_rate:g} signals/s for {s.rest_s:.0f} s, one at a time, at
  fan-out 10 and 1,000 (what a user whose signal arrives alone sees), and at fan-out 10
  again with `ORDER_MARKERS=true` (the worker writes an order marker into each idle price
  partition instead of waiting `LATENESS_MS`). *Under load*:
  {s.latency_rate} signals/s x {s.latency_fanout} agents for {s.latency_s:.0f} s.
- **Exits**: open positions written directly as a 1-SOL buy would write them (purchase
  swap, SOL debit, token balance, position with the default -32% stop), so the ledger
  invariants hold. One token held by {s.exit_positions:,} positions: ticks sent one at a
  time, timed from send to commit. At rest: {s.stop_out_ticks} tokens held by
  {s.stop_out_positions} positions each; one tick per token, half a second apart, halves
  its price. Many tokens: {tokens} tokens with {s.tick_positions_per_token} positions
  each, rounds of ticks 0.2% up (each one moves its positions' peaks, so each one writes),
  backlog and window as for throughput ({s.tick_window_s:.0f} s).
- **Limits**: raw consume is aiokafka (the worker's fetch settings, `read_committed`)
  reading the fan-out-1 records again and again for {s.limit_s:.0f} s without decoding
  them; raw write is `copy_records_to_table` of the same rows from {RAW_WRITERS}
  connections for {s.limit_s:.0f} s, one transaction per {RAW_SIGNALS_PER_BATCH} signals;
  the naive baseline does one transaction per agent execution (lock the SOL balance,
  insert the swap, debit, credit, insert the position and the execution, commit) with the
  worker's own decision and fill functions, signals read from memory (no Kafka), for
  {s.limit_s:.0f} s. The ratio to the ceiling uses min(raw consume x fan-out, raw write);
  the ratio to naive uses the faster naive run.
- **Memory**: VmHWM (peak resident set) of the worker from /proc/PID/status, read just
  before it is stopped. The table gives the highest of all worker runs; the details also
  give a run with one user of {s.memory_agents:,} agents ({s.memory_signals} signals,
  fan-out {s.memory_agents:,}).
- **The wait for prices**: the worker applies its records in one event-time order, so a
  signal waits until no price partition can still bring a tick before it. The figures are
  the worker's own histogram `signal_worker_signal_wait_seconds` (from reading a signal to
  its release), read from its `/metrics` after the warm-up and at the end of a run (the
  difference), p50/p99 interpolated within the buckets. *At rest*: the latency-at-rest run
  at fan-out 10 (no ticks). *Under load*: {s.load_ticks_per_s} ticks/s round-robin over
  {s.load_tokens} tokens (every price partition, each tick stamped when sent) while
  {s.load_rate} signals/s x {s.load_fanout} agents buy those tokens for {s.latency_s:.0f} s.
- **Catch-up**: {s.catchup_span_s:,} s of event time up to now, published while no worker
  runs: {s.catchup_tokens} tokens ticking every {s.catchup_tick_every_s:g} s (random walks
  of 0.1% steps with occasional 15% jumps), SOL/USD every second, {s.catchup_signals:,}
  signals without a price at random times to {s.catchup_users} users of four agents (every
  kind of stop, take profit, DCA, stale trade). Every record's Kafka timestamp and payload
  time is its event time. Timed from the worker's readiness to every stored offset at the
  topics' ends; `/readyz` and `/metrics` are read once a second meanwhile. The buys are
  checked against the published stream: each one's SOL price must be the last tick of its
  token and of SOL/USD at or before the signal's time (a DCA buy: its own time).

**Noise.** The machine has {r.machine.cores} cores shared by Kafka, PostgreSQL, the
worker, the benchmark itself and whatever else runs (other test suites); figures move by
tens of percent from run to run. Compare rows of one run with each other rather than
with another run.
"""
