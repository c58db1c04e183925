"""The worker's measurements: throughput by fan-out, latency under a fixed load, exits.

Every scenario gets a database cloned from the schema template and topics of its own,
sets up its data, and runs the real worker (`python -m worker run`) as a subprocess. What
is committed is read from `consumer_offsets`: the worker stores each partition's next
offset in the same transaction as the batch's rows, so the stored offsets say exactly
which records' effects are committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer

from benchmarks.infra import (
    BenchError,
    CpuMeter,
    Databases,
    Gate,
    Progress,
    Services,
    Topics,
    TopicSet,
    WorkerProcess,
    connect,
)
from benchmarks.relay import RelayRun, ratio, settle
from benchmarks.scrape import WAIT, Histogram, scrape
from benchmarks.workload import (
    SIGNAL_TYPE,
    SOL_USD,
    STEADY,
    TOKEN_USD,
    Agent,
    TokenNames,
    User,
    create_users,
    make_producer,
    now_ms,
    open_positions,
    set_price,
    signal_value,
    signals_round_robin,
    tick_value,
)
from worker.db.replay import read_agents, read_history
from worker.db.store import PgStore
from worker.domain.models import SOL_MINT, Signal
from worker.domain.records import PriceWrite
from worker.replay.engine import Record, Variant, record_of, replay
from worker.settings import Settings


@dataclass(frozen=True)
class Scale:
    """How big and how long each measurement is."""

    quick: bool
    window_s: float  # throughput: the sustained window
    fanouts: tuple[int, ...]
    latency_s: float
    latency_rate: int  # signals/s offered
    latency_fanout: int
    memory_agents: int  # one user with this many agents (fan-out = agents)
    memory_signals: int
    exit_positions: int  # positions in the one hot token
    trail_ticks: int
    tick_tokens: tuple[int, ...]  # the tick-rate runs: this many tokens each
    tick_positions_per_token: int
    tick_window_s: float
    limit_s: float  # raw write and naive baseline durations
    naive_connections: tuple[int, ...]
    rest_rate: float = 2.0  # latency at rest: one signal at a time, this many a second
    rest_s: float = 20.0
    rest_fanouts: tuple[int, ...] = (10, 1000)
    stop_out_positions: int = 100  # a tick that stops out this many positions, at rest
    stop_out_ticks: int = 20
    replay_agents: int = 100  # replay in memory: one user's agents (the realistic mix)
    replay_signals: int = 500
    replay_tick_tokens: int = 1000  # ... then ticks over this many tokens, 10 positions each
    replay_tick_rounds: int = 20
    # Under load (the signal's wait for the prices): ticks on every price partition at this
    # rate over this many tokens, while signals are offered at `load_rate` x `load_fanout`.
    load_rate: int = 50
    load_fanout: int = 10
    load_ticks_per_s: int = 500
    load_tokens: int = 300
    # Catch-up (benchmarks.catchup): a backlog of `catchup_span_s` of event time up to now.
    catchup_tokens: int = 50
    catchup_span_s: int = 3600
    catchup_tick_every_s: float = 1.0
    catchup_signals: int = 1500
    catchup_users: int = 150  # 4 agents each, one of each exit profile
    # Expected executions/s by fan-out: sizes the pre-published backlog (x BACKLOG_FACTOR).
    expected_rate: dict[int, float] = field(default_factory=dict)
    expected_ticks_per_s: float = 3000.0
    signals_per_user: int = 50
    group_size: int = 12  # users that signals go round-robin over (minimum signals too)


# The throughput runs' fan-outs and the naive baseline's connections (one table row each).
FANOUTS = (1, 10, 100, 1000)
NAIVE_CONNECTIONS = (1, 8)
FULL = Scale(
    quick=False,
    window_s=20,
    fanouts=FANOUTS,
    latency_s=20,
    latency_rate=200,
    latency_fanout=10,
    memory_agents=10_000,
    memory_signals=3,
    exit_positions=10_000,
    trail_ticks=5,
    tick_tokens=(1000, 10_000),
    tick_positions_per_token=10,
    tick_window_s=20,
    limit_s=8,
    naive_connections=NAIVE_CONNECTIONS,
    expected_rate={1: 2500, 10: 4000, 100: 5000, 1000: 4000},
)
QUICK = dataclasses.replace(
    FULL,
    quick=True,
    window_s=2,
    latency_s=1,
    memory_agents=300,
    memory_signals=2,
    exit_positions=500,
    trail_ticks=2,
    tick_tokens=(20, 40),
    tick_positions_per_token=3,
    rest_s=2,
    rest_fanouts=(10, 30),
    stop_out_positions=10,
    stop_out_ticks=3,
    replay_agents=10,
    replay_signals=20,
    replay_tick_tokens=20,
    replay_tick_rounds=2,
    load_rate=20,
    load_ticks_per_s=100,
    load_tokens=20,
    catchup_tokens=10,
    catchup_span_s=120,
    catchup_signals=60,
    catchup_users=10,
    expected_ticks_per_s=150.0,
    tick_window_s=1,
    limit_s=1,
    group_size=2,
)
BACKLOG_FACTOR = 1.2  # the pre-published backlog: expected rate x window x this
POLL_S = 0.05
LATENCY_POLL_S = 0.002

COMMITTED = """
SELECT coalesce(sum(next_offset), 0)::bigint FROM consumer_offsets
 WHERE consumer_group = $1 AND topic = $2
"""
PARTITION_OFFSETS = """
SELECT partition, next_offset FROM consumer_offsets WHERE consumer_group = $1 AND topic = $2
"""


@dataclass
class Context:
    """What every scenario needs: services, its own databases and topics, scale, progress."""

    services: Services
    databases: Databases
    topics: TopicSet
    scale: Scale
    progress: Progress
    tag: str


# ---------------------------------------------------------------------------- backlog


class Backlog:
    """Records published ahead of the worker, topped up while it runs if it would run dry.

    The first part is published before the worker starts, sized from `Scale.expected_*`.
    While the worker runs, `top_up` adds more when what is left would not last until the
    window's end at the rate seen so far, so the worker never waits for records.
    """

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self._producer: Any = None
        self.published = 0
        self.topped_up = 0

    async def make(self, start: int, count: int) -> list[tuple[bytes, bytes]]:
        """Records `start` .. `start + count - 1` (overridden)."""
        raise NotImplementedError

    async def add(self, count: int, *, top_up: bool = False) -> None:
        """Publish `count` more records and wait for their acknowledgements."""
        if self._producer is None:
            self._producer = make_producer(self._bootstrap, linger_ms=20)
            await self._producer.start()
        records = await self.make(self.published, count)
        futures = [await self._producer.send(self._topic, value, key=key) for key, value in records]
        await asyncio.gather(*futures)
        self.published += count
        if top_up:
            self.topped_up += count

    async def close(self) -> None:
        """Stop the producer."""
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None


class SignalBacklog(Backlog):
    """Signals round-robin over groups of users; a new group after `signals_per_user`
    signals each, so no agent collects more open positions than that."""

    def __init__(
        self,
        ctx: Context,
        conn: asyncpg.Connection,
        topic: str,
        fanout: int,
        group_size: int,
        slug: str,
    ) -> None:
        super().__init__(ctx.services.bootstrap, topic)
        self._conn = conn
        self._fanout = fanout
        self._group = group_size
        self._per_user = ctx.scale.signals_per_user
        self._slug = slug
        self._tokens = TokenNames(slug + ctx.tag)
        self.users: list[User] = []

    def _users_for(self, signals: int) -> int:
        block = self._group * self._per_user
        return ((max(signals, 1) - 1) // block + 1) * self._group

    @property
    def users_used(self) -> int:
        """How many users the published signals went to."""
        return self._users_for(self.published)

    async def reserve(self, signals: int) -> None:
        """Create the users of `signals` signals now (so no top-up has to, mid-run)."""
        needed = self._users_for(signals)
        if needed > len(self.users):
            self.users += await create_users(self._conn, needed - len(self.users), self._fanout)

    async def make(self, start: int, count: int) -> list[tuple[bytes, bytes]]:
        """Signals `start` .. `start + count - 1`, creating users as needed."""
        block = self._group * self._per_user
        await self.reserve(start + count)
        records = []
        for i in range(start, start + count):
            user = self.users[(i // block) * self._group + i % self._group]
            records.append((user.key, signal_value(user, self._tokens(i), f"{self._slug}-{i}")))
        return records


# ---------------------------------------------------------------------------- throughput


@dataclass
class Throughput:
    """Executions committed per second, from readiness to the last record's commit."""

    label: str
    fanout: int
    users: int
    log_level: str
    published: int  # signals, including top-ups
    topped_up: int  # signals published while the worker ran
    executions: int  # every execution of the backlog
    window_s: float  # from readiness to the commit of the backlog's last record
    statuses: dict[str, int]
    peak_rss_kb: int | None
    worker_cpu_s: float | None
    database_cpu_s: float | None
    topics: Topics
    curve: list[tuple[float, int]]  # (seconds since ready, executions committed)
    events: bool | None = None  # EVENTS_ENABLED given to the worker (None: its default)
    relay: RelayRun | None = None  # with events on: the relay's drain and delay
    outbox_rows: int = 0  # events the run wrote to the outbox

    @property
    def rate(self) -> float:
        """Executions per second."""
        return self.executions / self.window_s if self.window_s > 0 else 0.0

    @property
    def success_pct(self) -> float:
        """The share of executions that bought (status `success`), in %."""
        total = sum(self.statuses.values())
        return 100 * self.statuses.get("success", 0) / total if total else 0.0


async def throughput(
    ctx: Context,
    fanout: int,
    *,
    log_level: str = "WARNING",
    group_size: int | None = None,
    signals: int | None = None,
    name: str | None = None,
    profile: Path | None = None,
    events: bool | None = None,
) -> Throughput:
    """Pre-publish signals for users of `fanout` agents, start the worker, measure.

    The window runs from the worker's readiness (partitions assigned, fetching) to the
    commit of the backlog's last record. (The worker commits a partition's fetched batch
    at once, up to 500 signals, so a window between two commits would be too coarse.)
    With `signals`, exactly that many are published and none is added.

    With `events` given, the worker runs with EVENTS_ENABLED set so; with True, the
    relay's drain and delay are measured after the window (`benchmarks.relay.settle`),
    the worker still running.
    """
    scale = ctx.scale
    label = name or f"fan-out {fanout:,}"
    tag = f"{label} ({log_level})"
    fixed = signals is not None
    group_size = group_size or scale.group_size
    if signals is None:
        expected = scale.expected_rate.get(fanout, 2000.0)
        signals = max(group_size, math.ceil(expected * scale.window_s * BACKLOG_FACTOR / fanout))
    slug = label.replace(" ", "").replace(",", "").replace("-", "") + log_level[:1].lower()
    dsn = await ctx.databases.create(slug)
    topics = await ctx.topics.create(slug)
    conn = await connect(dsn)
    backlog = SignalBacklog(ctx, conn, topics.signals, fanout, group_size, slug)
    try:
        await set_price(conn, SOL_MINT, SOL_USD)
        ctx.progress(f"{tag}: publishing {signals:,} signals to users of {fanout:,} agents")
        await backlog.reserve(signals * 2)  # room for top-ups without creating users mid-run
        await backlog.add(signals)
        gate = Gate(dsn, "trading_signals")
        await gate.close()
        env = {} if events is None else {"EVENTS_ENABLED": str(events).lower()}
        worker = WorkerProcess(
            ctx.services, dsn, topics, log_level=log_level, profile=profile, env=env
        ).start()
        relay_run = None
        try:
            curve, meter = await _drive(
                ctx,
                worker,
                gate,
                conn,
                topics.signals,
                topics.group,
                tag,
                weight=fanout,
                window_s=scale.window_s,
                backlog=backlog,
                top_up=not fixed,
            )
            peak = worker.peak_rss_kb()
            if events:
                ctx.progress(f"{tag}: waiting for the relay to drain the outbox")
                relay_run = await settle(conn, worker, ctx.services.bootstrap, topics.events)
        finally:
            await gate.open()
            await worker.stop()
        outbox_rows = int(await conn.fetchval("SELECT count(*) FROM event_outbox"))
        statuses = {
            r["status"]: r["count"]
            for r in await conn.fetch(
                "SELECT status, count(*) FROM signal_executions GROUP BY status"
            )
        }
    finally:
        await backlog.close()
        await conn.close()
    await ctx.databases.drop(dsn)
    return Throughput(
        label=label,
        fanout=fanout,
        users=backlog.users_used,
        log_level=log_level,
        published=backlog.published,
        topped_up=backlog.topped_up,
        executions=curve[-1][1],
        window_s=curve[-1][0],
        statuses=statuses,
        peak_rss_kb=peak,
        worker_cpu_s=meter.process_s,
        database_cpu_s=meter.database_s,
        topics=topics,
        curve=curve,
        events=events,
        relay=relay_run,
        outbox_rows=outbox_rows,
    )


@dataclass
class RelayCost:
    """Fan-out 100 with the events relay off and on, the same workload, in the order
    off, on, on, off (each on a fresh database and topics)."""

    runs: list[Throughput]  # in the order they ran

    @property
    def offs(self) -> list[Throughput]:
        """The runs with the relay off."""
        return [t for t in self.runs if not t.events]

    @property
    def ons(self) -> list[Throughput]:
        """The runs with the relay on."""
        return [t for t in self.runs if t.events]

    @property
    def off_rate(self) -> float:
        """The mean throughput of the runs with the relay off."""
        return statistics.fmean(t.rate for t in self.offs)

    @property
    def on_rate(self) -> float:
        """The mean throughput of the runs with the relay on."""
        return statistics.fmean(t.rate for t in self.ons)

    @property
    def on(self) -> Throughput:
        """The first run with the relay on (its drain and delay are the ones reported)."""
        return self.ons[0]

    @property
    def ratio(self) -> float:
        """Throughput on / off, of the means."""
        return ratio(self.on_rate, self.off_rate)


# Off, on, on, off: a machine that speeds up or slows down during the four runs (a cache
# warming, a checkpoint or autovacuum of the durable server, a neighbour) weighs on both
# sides alike. The two back-to-back runs (off, then on) measured 0.76 to 1.19 on one
# machine on one day, the second run of a pair mostly the slower.
RELAY_ORDER = (False, True, True, False)


async def relay_cost(ctx: Context, fanout: int = 100) -> RelayCost:
    """The throughput runs at `fanout` with EVENTS_ENABLED false and true, in
    `RELAY_ORDER` (fresh databases and topics each); the runs with it on also measure the
    relay's drain and delay."""
    runs: list[Throughput] = []
    for n, events in enumerate(RELAY_ORDER, 1):
        name = f"fan-out {fanout:,} relay {'on' if events else 'off'} {n}of{len(RELAY_ORDER)}"
        runs.append(await throughput(ctx, fanout, events=events, name=name))
    return RelayCost(runs=runs)


async def _drive(
    ctx: Context,
    worker: WorkerProcess,
    gate: Gate,
    conn: asyncpg.Connection,
    topic: str,
    group: str,
    tag: str,
    *,
    weight: int,
    window_s: float,
    backlog: Backlog,
    top_up: bool,
) -> tuple[list[tuple[float, int]], CpuMeter]:
    """Wait for the worker to be ready and blocked at the `gate`, open it, then poll the
    committed offsets of `topic` until every published record is committed, topping
    `backlog` up while the window lasts.

    Returns (seconds since the gate opened, records committed x `weight`), from (0, 0),
    and the CPU that the worker and its database backends used in that time.
    """
    # Not /readyz: with every pool connection waiting at the gate it cannot answer.
    blocked = await gate.wait_blocked(worker)
    if not blocked:
        ctx.progress(f"{tag}: the worker never waited at the gate; timing from readiness")
        await gate.open()
        await worker.wait_ready()
    meter = CpuMeter(worker, conn)
    await meter.start()
    ready = time.monotonic()
    await gate.open()
    curve: list[tuple[float, int]] = [(0.0, 0)]
    limit_s = max(120.0, window_s * 6)
    while True:
        done = int(await conn.fetchval(COMMITTED, group, topic))
        elapsed = time.monotonic() - ready
        if done * weight > curve[-1][1]:
            curve.append((elapsed, done * weight))
            ctx.progress(f"{tag}: {done * weight:,} committed, {elapsed:4.1f}s", transient=True)
        if done >= backlog.published:
            await meter.stop()
            return curve, meter
        # The rate is judged over a quarter of the window at least: the first commits come
        # in a burst (every lane's transaction, held at the gate, commits at once), and a
        # top-up sized on them made a 20 s window last 100 s.
        if top_up and done > 0 and window_s / 4 <= elapsed < window_s:
            per_s = done / elapsed
            left = backlog.published - done
            if elapsed + left / per_s < window_s * 1.1:
                want = math.ceil((window_s * 1.2 - elapsed) * per_s) - left
                if want > 0:
                    await backlog.add(want, top_up=True)
        if elapsed > limit_s:
            raise BenchError(f"{tag}: {done:,} records committed after {elapsed:.0f}s; giving up")
        worker.check_alive()
        await asyncio.sleep(POLL_S)


# ---------------------------------------------------------------------------- latency


@dataclass
class Latency:
    """Send-to-commit latencies of a fixed offered load, in milliseconds."""

    rate: float
    fanout: int
    duration_s: float
    sent: int
    latencies_ms: list[float]  # send (CreateTime) -> commit seen by the poll, per signal
    to_txn_start_ms: list[float]  # send -> the batch transaction's start (executed_at)
    poll_interval_ms: float
    executions: int
    achieved_per_s: float  # executions / (last commit seen - first send)
    # The worker's own `signal_worker_signal_wait_seconds` over the measured signals (the
    # warm-up's left out): from reading a signal to its release in event-time order.
    wait: Histogram | None = None
    ticks_per_s: float = 0.0  # ticks offered meanwhile (0: none)
    tick_tokens: int = 0
    ticks_sent: int = 0

    def pct(self, q: float) -> float:
        """The `q`-th percentile (0..100) of `latencies_ms`, nearest rank."""
        return percentile(self.latencies_ms, q)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


async def latency(
    ctx: Context,
    *,
    rate: float,
    fanout: int,
    duration_s: float,
    name: str = "latency",
    ticks_per_s: float = 0.0,
    tick_tokens: int = 0,
    env: dict[str, str] | None = None,
) -> Latency:
    """Offer `rate` signals/s x `fanout` agents for `duration_s`; time each to its commit.

    The commit time of a signal is when a poll of `consumer_offsets` (every ~2 ms) first
    sees its partition's stored offset past the record: the worker writes that offset in
    the batch's transaction, so this is when the signal's executions became visible.

    With `ticks_per_s`, ticks flow meanwhile on every price partition, round-robin over
    `tick_tokens` tokens (each tick 0.1% up or down), and the signals buy those tokens:
    each signal then waits for the ticks before it in event time (the worker's order).
    The worker's wait histogram is read from its `/metrics` after the warm-up and at the end.
    """
    scale = ctx.scale
    total = math.ceil(rate * duration_s)
    users_n = max(min(scale.group_size, total), math.ceil(total / scale.signals_per_user))
    tag = f"latency {rate}/s x {fanout:,}" + (f", {ticks_per_s:g} ticks/s" if ticks_per_s else "")
    ctx.progress(f"{tag}: {users_n} users x {fanout:,} agents")
    dsn = await ctx.databases.create(name)
    topics = await ctx.topics.create(name)
    conn = await connect(dsn)
    poll_conn = await connect(dsn)
    producer = make_producer(ctx.services.bootstrap, linger_ms=0)
    try:
        accounts = await create_users(conn, users_n, fanout)
        await set_price(conn, SOL_MINT, SOL_USD)
        tokens: Callable[[int], str] = TokenNames("latency" + ctx.tag)
        flow = None
        if ticks_per_s:
            ticking = TokenNames("ticking" + ctx.tag)
            names = [ticking(i) for i in range(tick_tokens)]
            tokens = lambda i: names[i % len(names)]  # noqa: E731 - the signals buy them
            flow = TickFlow(producer, topics.prices, names, ticks_per_s)
        worker = WorkerProcess(ctx.services, dsn, topics, env=dict(env or {})).start()
        await producer.start()
        try:
            await worker.wait_ready()
            if flow is not None:
                flow.start()
            # Warm-up: a few signals end to end (connections, statements, caches).
            warm = signals_round_robin(
                accounts, len(accounts), TokenNames("warm" + ctx.tag), "warm"
            )
            for key, value in warm:
                await producer.send_and_wait(topics.signals, value, key=key)
            await _wait_committed(poll_conn, topics, len(warm), worker)
            before = await scrape(worker.http_port)
            ctx.progress(f"{tag}: offering load for {duration_s:.0f}s")
            first_send = time.time()
            offer = _Offer(
                ctx, producer, topics, accounts, tokens, rate=rate, duration_s=duration_s
            )
            sender = asyncio.create_task(offer.send_all(total))
            await offer.poll(poll_conn, worker)
            await sender
            last_commit = max(offer.seen.values(), default=first_send)
            after = await scrape(worker.http_port)
        finally:
            if flow is not None:
                await flow.stop()
            await producer.stop()
            await worker.stop()
        wait = None
        if before is not None and after is not None:
            wait = after.histogram(WAIT).since(before.histogram(WAIT))
        per_key = await conn.fetch(
            "SELECT s.idempotency_key AS key, max(e.executed_at) AS started, count(*) AS n "
            "FROM trading_signals s JOIN signal_executions e ON e.signal_id = s.id "
            "WHERE s.idempotency_key LIKE 'lat-%' GROUP BY s.idempotency_key"
        )
        starts = {r["key"]: r["started"] for r in per_key}
        executions = sum(int(r["n"]) for r in per_key)
    finally:
        await poll_conn.close()
        await conn.close()
    await ctx.databases.drop(dsn)
    latencies = [offer.seen[k] * 1000 - ts for k, ts in offer.sent.items() if k in offer.seen]
    to_start = [starts[k].timestamp() * 1000 - ts for k, ts in offer.sent.items() if k in starts]
    return Latency(
        rate=rate,
        fanout=fanout,
        duration_s=duration_s,
        sent=len(offer.sent),
        latencies_ms=latencies,
        to_txn_start_ms=to_start,
        poll_interval_ms=offer.poll_interval_s * 1000,
        executions=executions,
        achieved_per_s=executions / (last_commit - first_send) if last_commit > first_send else 0.0,
        wait=wait,
        ticks_per_s=ticks_per_s,
        tick_tokens=tick_tokens,
        ticks_sent=flow.sent if flow is not None else 0,
    )


class TickFlow:
    """Ticks at a steady rate, round-robin over `tokens`, stamped with the wall clock, each
    0.1% above or below the token's price (alternately), until stopped."""

    def __init__(
        self, producer: AIOKafkaProducer, topic: str, tokens: list[str], per_s: float
    ) -> None:
        self._producer = producer
        self._topic = topic
        self._tokens = tokens
        self._per_s = per_s
        self._task: asyncio.Task[None] | None = None
        self._acks: list[Any] = []
        self.sent = 0

    def start(self) -> None:
        """Start sending in the background."""
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop sending and wait for every acknowledgement."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.gather(*self._acks, return_exceptions=True)

    async def _run(self) -> None:
        started = time.monotonic()
        up, down = TOKEN_USD * Decimal("1.001"), TOKEN_USD * Decimal("0.999")
        while True:
            due = int((time.monotonic() - started) * self._per_s) + 1
            while self.sent < due:
                round_, k = divmod(self.sent, len(self._tokens))
                token = self._tokens[k]
                ts = now_ms()
                value = tick_value(
                    token, up if round_ % 2 else down, datetime.fromtimestamp(ts / 1000, UTC)
                )
                self._acks.append(
                    await self._producer.send(
                        self._topic, value, key=token.encode(), timestamp_ms=ts
                    )
                )
                self.sent += 1
            await asyncio.sleep(0.005)


class _Offer:
    """An open-loop load: signals sent at a fixed rate, each timed to its commit."""

    def __init__(
        self,
        ctx: Context,
        producer: AIOKafkaProducer,
        topics: Topics,
        accounts: list[User],
        tokens: Callable[[int], str],
        *,
        rate: float,
        duration_s: float,
    ) -> None:
        self._ctx = ctx
        self._rate = rate
        self._duration_s = duration_s
        self._producer = producer
        self._topics = topics
        self._accounts = accounts
        self._tokens = tokens
        self.sent: dict[str, int] = {}  # key -> CreateTime, epoch ms
        self.seen: dict[str, float] = {}  # key -> commit seen, epoch s
        self._pending: dict[int, list[tuple[int, str]]] = {}  # partition -> (offset, key)
        self._sending_done = asyncio.Event()
        self.poll_interval_s = 0.0

    async def send_all(self, total: int) -> None:
        """Send `total` signals, signal i at i / rate seconds after the start."""
        rate = self._rate
        started = time.monotonic()
        acks: list[Any] = []
        for i in range(total):
            delay = started + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            user = self._accounts[i % len(self._accounts)]
            key = f"lat-{i}"
            ts = now_ms()
            future = await self._producer.send(
                self._topics.signals,
                signal_value(user, self._tokens(i), key),
                key=user.key,
                timestamp_ms=ts,
            )
            self.sent[key] = ts
            # Registered for the poll the moment the broker acknowledges it (its partition
            # and offset are known only then), not at the next send: at 2 signals/s that
            # would add half a second to every figure.
            future.add_done_callback(lambda done, key=key: self._ack(key, done))
            acks.append(future)
        await asyncio.gather(*acks)
        self._sending_done.set()

    def _ack(self, key: str, future: Any) -> None:  # noqa: ANN401 - aiokafka is untyped
        meta = future.result()
        self._pending.setdefault(meta.partition, []).append((meta.offset, key))

    def _observe(self, rows: list[asyncpg.Record], observed: float) -> None:
        for row in rows:
            waiting = self._pending.get(row["partition"], [])
            for offset, key in waiting:
                if offset < row["next_offset"]:
                    self.seen[key] = observed
            self._pending[row["partition"]] = [
                (offset, key) for offset, key in waiting if offset >= row["next_offset"]
            ]

    async def poll(self, conn: asyncpg.Connection, worker: WorkerProcess) -> None:
        """Poll the stored offsets until every sent signal is seen committed."""
        polls = 0
        started = time.monotonic()
        deadline = started + self._duration_s + 60
        while time.monotonic() < deadline:
            rows = await conn.fetch(PARTITION_OFFSETS, self._topics.group, self._topics.signals)
            self._observe(rows, time.time())
            polls += 1
            if self._sending_done.is_set() and not any(self._pending.values()):
                break
            if polls % 250 == 0:
                worker.check_alive()
                self._ctx.progress(
                    f"latency: {len(self.sent):,} sent, {len(self.seen):,} committed",
                    transient=True,
                )
            await asyncio.sleep(LATENCY_POLL_S)
        self.poll_interval_s = (time.monotonic() - started) / max(polls, 1)


async def _wait_committed(
    conn: asyncpg.Connection,
    topics: Topics,
    count: int,
    worker: WorkerProcess,
    *,
    topic: str | None = None,
    timeout_s: float = 60,
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        worker.check_alive()
        if int(await conn.fetchval(COMMITTED, topics.group, topic or topics.signals)) >= count:
            return
        await asyncio.sleep(0.02)
    raise BenchError(f"{count} records not committed within {timeout_s:.0f}s:\n{worker.tail()}")


# ---------------------------------------------------------------------------- exits


@dataclass
class TickTimes:
    """Send-to-commit times of single ticks over one token's open positions, in ms."""

    positions: int
    flat_ms: float  # a newer tick at the same price: evaluated, nothing written
    trail_ms: list[float]  # price up 1% each: every position's peak written
    stop_ms: float  # price halves: every position stopped out (sale, P/L row, delete)
    closed: int  # positions the stop-out tick closed


async def one_tick(ctx: Context) -> TickTimes:
    """Ticks for a token held by `exit_positions` open positions, one at a time."""
    scale = ctx.scale
    n = scale.exit_positions
    users_n = max(1, n // 1000)
    ctx.progress(f"exits: {n:,} positions in one token")
    dsn = await ctx.databases.create("onetick")
    topics = await ctx.topics.create("onetick")
    conn = await connect(dsn)
    try:
        accounts = await create_users(conn, users_n, n // users_n, profiles=(STEADY,))
        token = TokenNames("hot" + ctx.tag)(0)
        opened_at = datetime.now(UTC)
        await open_positions(conn, [(a, token) for u in accounts for a in u.agents], now=opened_at)
        await set_price(conn, SOL_MINT, SOL_USD)
        await conn.execute("ANALYZE")
        worker = WorkerProcess(ctx.services, dsn, topics).start()
        sender = _TickSender(ctx, conn, topics, worker)
        try:
            await worker.wait_ready()
            await sender.start()
            tick = sender.tick
            await tick(TokenNames("cold" + ctx.tag)(0), TOKEN_USD)  # warm-up, no positions
            await tick(token, TOKEN_USD)  # the first tick of the token stores its price
            flat = await tick(token, TOKEN_USD)
            trail = []
            price = TOKEN_USD
            for _ in range(scale.trail_ticks):
                price = (price * Decimal("1.01")).quantize(Decimal("1e-12"))
                trail.append(await tick(token, price))
            stop = await tick(token, (price / 2).quantize(Decimal("1e-12")))
        finally:
            await sender.stop()
            await worker.stop()
        closed = n - int(
            await conn.fetchval(
                "SELECT count(*) FROM agent_positions WHERE token_address = $1", token
            )
        )
    finally:
        await conn.close()
    await ctx.databases.drop(dsn)
    return TickTimes(positions=n, flat_ms=flat, trail_ms=trail, stop_ms=stop, closed=closed)


@dataclass
class TickRate:
    """Sustained price ticks per second over many tokens."""

    tokens: int
    positions: int
    ticks: int
    window_s: float  # from readiness to the commit of the last tick
    topped_up: int
    worker_cpu_s: float | None
    database_cpu_s: float | None

    @property
    def rate(self) -> float:
        """Ticks per second."""
        return self.ticks / self.window_s if self.window_s > 0 else 0.0


# The tick-rate backlog's rounds are a second apart from this long ago: all of them lie in
# the past. (Stamped from now on, they would lie ahead of the worker's clock, and the order
# holds a record until the clock passes it: the run would measure the clock, not the worker.)
TICK_BACKLOG_AGE = timedelta(hours=1)


class TickBacklog(Backlog):
    """Rounds of ticks, one per token a round, each round 0.2% up on the one before (below
    the trailing start): every tick moves its positions' peaks, so each one writes. Round r
    is stamped `base` + r seconds."""

    def __init__(self, bootstrap: str, topic: str, tokens: list[str], base: datetime) -> None:
        super().__init__(bootstrap, topic)
        self._tokens = tokens
        self._base = base

    async def make(self, start: int, count: int) -> list[tuple[bytes, bytes]]:
        """Ticks `start` .. `start + count - 1`."""
        records = []
        for i in range(start, start + count):
            round_, token = divmod(i, len(self._tokens))
            t = self._tokens[token]
            price = (TOKEN_USD * Decimal("1.002") ** round_).quantize(Decimal("1e-12"))
            records.append(
                (t.encode(), tick_value(t, price, self._base + timedelta(seconds=round_)))
            )
        return records


async def tick_rate(ctx: Context, tokens_n: int) -> TickRate:
    """Ticks for `tokens_n` tokens, positions spread evenly over them; ticks/s."""
    scale = ctx.scale
    per_token = scale.tick_positions_per_token
    positions = tokens_n * per_token
    ticks = max(
        2 * tokens_n, math.ceil(scale.expected_ticks_per_s * scale.tick_window_s * BACKLOG_FACTOR)
    )
    tag = f"ticks over {tokens_n:,} tokens"
    ctx.progress(f"{tag}: {positions:,} positions, {ticks:,} ticks")
    dsn = await ctx.databases.create(f"tickrate{tokens_n}")
    topics = await ctx.topics.create(f"tickrate{tokens_n}")
    conn = await connect(dsn)
    names = TokenNames("spread" + ctx.tag)
    tokens = [names(i) for i in range(tokens_n)]
    base = datetime.now(UTC) - TICK_BACKLOG_AGE
    backlog = TickBacklog(ctx.services.bootstrap, topics.prices, tokens, base)
    try:
        accounts = await create_users(
            conn, max(1, positions // 1000), min(positions, 1000), profiles=(STEADY,)
        )
        agents: list[Agent] = [a for u in accounts for a in u.agents]
        await open_positions(
            conn,
            [(a, tokens[i % tokens_n]) for i, a in enumerate(agents)],
            now=base - timedelta(minutes=1),
        )
        await set_price(conn, SOL_MINT, SOL_USD)
        await conn.execute("ANALYZE")
        await backlog.add(ticks)
        gate = Gate(dsn, "token_prices")
        await gate.close()
        worker = WorkerProcess(ctx.services, dsn, topics).start()
        try:
            curve, meter = await _drive(
                ctx,
                worker,
                gate,
                conn,
                topics.prices,
                topics.group,
                tag,
                weight=1,
                window_s=scale.tick_window_s,
                backlog=backlog,
                top_up=True,
            )
        finally:
            await gate.open()
            await worker.stop()
    finally:
        await backlog.close()
        await conn.close()
    await ctx.databases.drop(dsn)
    return TickRate(
        tokens=tokens_n,
        positions=positions,
        ticks=curve[-1][1],
        window_s=curve[-1][0],
        topped_up=backlog.topped_up,
        worker_cpu_s=meter.process_s,
        database_cpu_s=meter.database_s,
    )


@dataclass
class StopOut:
    """Send-to-commit times of ticks sent one at a time, each stopping out a token's
    positions (sales, balances, P/L rows, deletes), in ms."""

    positions: int  # per tick
    times_ms: list[float]
    closed: int  # positions closed over all the ticks

    def pct(self, q: float) -> float:
        """The `q`-th percentile (0..100) of `times_ms`, nearest rank."""
        return percentile(self.times_ms, q)


async def stop_out(ctx: Context) -> StopOut:
    """`stop_out_ticks` tokens held by `stop_out_positions` positions each; one tick per
    token, at rest (half a second apart), halves its price: every position stops out."""
    scale = ctx.scale
    n, ticks = scale.stop_out_positions, scale.stop_out_ticks
    ctx.progress(f"exits at rest: {ticks} ticks, each stopping out {n} positions")
    dsn = await ctx.databases.create("stopout")
    topics = await ctx.topics.create("stopout")
    conn = await connect(dsn)
    try:
        accounts = await create_users(conn, ticks, n, profiles=(STEADY,))
        names = TokenNames("stop" + ctx.tag)
        tokens = [names(i) for i in range(ticks)]
        holdings = [(a, tokens[k]) for k, u in enumerate(accounts) for a in u.agents]
        await open_positions(conn, holdings, now=datetime.now(UTC))
        await set_price(conn, SOL_MINT, SOL_USD)
        await conn.execute("ANALYZE")
        worker = WorkerProcess(ctx.services, dsn, topics).start()
        sender = _TickSender(ctx, conn, topics, worker)
        try:
            await worker.wait_ready()
            await sender.start()
            await sender.tick(TokenNames("cold" + ctx.tag)(0), TOKEN_USD)  # warm-up
            times = []
            for token in tokens:
                await asyncio.sleep(0.5)
                times.append(await sender.tick(token, TOKEN_USD / 2))
        finally:
            await sender.stop()
            await worker.stop()
        left = int(await conn.fetchval("SELECT count(*) FROM agent_positions"))
    finally:
        await conn.close()
    await ctx.databases.drop(dsn)
    return StopOut(positions=n, times_ms=times, closed=len(holdings) - left)


class _TickSender:
    """Sends ticks one at a time, each timed from its send to the commit of its offset."""

    def __init__(
        self, ctx: Context, conn: asyncpg.Connection, topics: Topics, worker: WorkerProcess
    ) -> None:
        self._conn = conn
        self._topics = topics
        self._worker = worker
        self._producer = make_producer(ctx.services.bootstrap, linger_ms=0)
        self._sent = 0
        self._ts = datetime.now(UTC)

    async def start(self) -> None:
        """Start the producer."""
        await self._producer.start()

    async def stop(self) -> None:
        """Stop the producer."""
        await self._producer.stop()

    async def tick(self, token: str, price: Decimal) -> float:
        """Send a tick for `token` at `price`, stamped now (and newer than the last); its ms.

        Never ahead of the clock: the worker's order holds a record stamped in the future
        until its clock passes it."""
        self._ts = max(datetime.now(UTC), self._ts + timedelta(milliseconds=1))
        started = time.time()
        await self._producer.send_and_wait(
            self._topics.prices, tick_value(token, price, self._ts), key=token.encode()
        )
        self._sent += 1
        await _wait_committed(
            self._conn, self._topics, self._sent, self._worker, topic=self._topics.prices
        )
        return (time.time() - started) * 1000


@dataclass
class ReplaySpeed:
    """`replay` in memory: signals through many agents, then ticks over many positions."""

    executions: int
    signals_s: float
    ticks: int
    positions: int
    ticks_s: float

    @property
    def executions_per_s(self) -> float:
        """Agent executions replayed per second."""
        return self.executions / self.signals_s if self.signals_s > 0 else 0.0

    @property
    def ticks_per_s(self) -> float:
        """Ticks replayed per second."""
        return self.ticks / self.ticks_s if self.ticks_s > 0 else 0.0


async def replay_speed(ctx: Context) -> ReplaySpeed:
    """The replay engine on a recorded stream: signals stored and ticks kept in a database
    as the worker stores them, read back by `replay`'s own reads, replayed in memory."""
    scale = ctx.scale
    ctx.progress(
        f"replay: recording {scale.replay_signals:,} signals x {scale.replay_agents} agents "
        f"and {scale.replay_tick_rounds * scale.replay_tick_tokens:,} ticks"
    )
    dsn = await ctx.databases.create("replay")
    conn = await connect(dsn)
    # After the accounts' deposits (made now): the record's times lie ahead of them.
    t0 = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    names = TokenNames("replay" + ctx.tag)
    settings = Settings(log_level="WARNING")
    try:
        [mixed] = await create_users(conn, 1, scale.replay_agents)
        [holders] = await create_users(conn, 1, 10, profiles=(STEADY,))
        await set_price(conn, SOL_MINT, SOL_USD)
        tokens = [names(100_000 + i) for i in range(scale.replay_tick_tokens)]
        store = PgStore(conn)
        async with conn.transaction():
            await store.insert_signals(
                [_bench_signal(mixed, i, names(i), t0) for i in range(scale.replay_signals)]
            )
            await store.insert_signals(
                [_bench_signal(holders, i, token, t0) for i, token in enumerate(tokens)]
            )
            # A tick every 100 ms after the buys: the whole record spans well under the
            # stale-trade hold (60 minutes), so every tick only moves its positions' peaks.
            first = t0 + timedelta(seconds=max(len(tokens), scale.replay_signals) / 10 + 1)
            ticks = []
            for r in range(scale.replay_tick_rounds):
                price = (TOKEN_USD * Decimal("1.002") ** (r + 1)).quantize(Decimal("1e-12"))
                for k, token in enumerate(tokens):
                    ts = first + timedelta(milliseconds=100 * (r * len(tokens) + k))
                    ticks.append(PriceWrite(token, price, ts))
            await store.record_ticks(ticks)
        ctx.progress("replay: reading the record back and replaying it in memory")

        async def recorded(user: User) -> Record:
            agents = await read_agents(conn, None, user.user_id)
            record = record_of(agents, await read_history(conn, agents))
            assert record is not None
            return record

        mixed_record = await recorded(mixed)
        run = await replay(mixed_record.start, mixed_record.events, Variant("bench"), settings)
        executions, signals_s = len(run.store.executions), run.seconds
        held = await recorded(holders)
        buys = [e for e in held.events if e.signal is not None]
        kept = [e for e in held.events if e.tick is not None]
        bought = await replay(held.start, buys, Variant("bench"), settings)
        both = await replay(held.start, held.events, Variant("bench"), settings)
    finally:
        await conn.close()
    await ctx.databases.drop(dsn)
    return ReplaySpeed(
        executions=executions,
        signals_s=signals_s,
        ticks=len(kept),
        positions=len(bought.store.positions),
        ticks_s=max(both.seconds - bought.seconds, 1e-9),
    )


def _bench_signal(user: User, i: int, token: str, t0: datetime) -> Signal:
    return Signal(
        user_id=user.user_id,
        token_address=token,
        signal_type=SIGNAL_TYPE,
        signal_strength=4,
        idempotency_key=f"replay-{i}",
        created_at=t0 + timedelta(milliseconds=100 * i),
        symbol="BENCH",
        price_usd=TOKEN_USD,
    )


def median(values: list[float]) -> float:
    """The median, NaN for none."""
    return statistics.median(values) if values else math.nan
