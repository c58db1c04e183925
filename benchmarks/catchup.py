"""Catch-up after downtime: a backlog of event time up to now, published while no worker
runs, then consumed from the start.

The backlog is what an hour of a market and of signals looks like: every token ticks
every `catchup_tick_every_s` seconds on a random walk with jumps (so stop losses, trailing
stops, take profits and DCA re-buys fire along the way), SOL/USD ticks every second, and
signals without a price of their own (each buy takes its token's price from the ticks
before it) go at random times to users whose four agents have every kind of exit enabled.
Every record's Kafka timestamp and payload time (`ts`, `created_at`) is its event time.

Timed from the worker's readiness (it blocks at a gate on its first write, as the
throughput runs do) to the moment the stored offsets of both topics reach their ends.
Meanwhile `/readyz` and `/metrics` are read every second: what an operator sees.

No look-ahead, checked on the ledger: every buy's price in SOL must be the one of the last
tick of its token and of SOL/USD at or before the signal's time in the published stream
(a DCA re-buy: at or before its own time), not a price from later in the backlog.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import orjson

from benchmarks.infra import BenchError, Gate, Topics, WorkerProcess, connect
from benchmarks.scenarios import COMMITTED, Context
from benchmarks.scrape import BUFFERED, LAG, LATE, WAIT, Histogram, Scrape, http_get, scrape
from benchmarks.workload import (
    LADDER,
    MOMENTUM,
    SIGNAL_TYPE,
    STEADY,
    ZONED,
    Profile,
    TokenNames,
    User,
    create_users,
    make_producer,
    set_price,
)
from worker.domain.fills import token_price_sol
from worker.domain.models import SOL_MINT

# Every agent trades with exits: fixed stop (and stale-trade closes, the defaults),
# exponential trailing stop with aggressive take profit and DCA, zoned stop, custom trailing
# levels with take profit.
PROFILES: tuple[Profile, ...] = (STEADY, MOMENTUM, ZONED, LADDER)
SOL_USD_START = Decimal(150)
_STEP = Decimal("1.001")  # a token's price moves by whole powers of this
_SOL_STEP = Decimal("1.0002")
_PLACES = Decimal("1e-12")
MONITOR_S = 1.0
POLL_S = 0.1

BUYS = """
SELECT t.output_mint AS token, t.output_price AS price_sol, t.is_dca, t.transaction_time,
       s.created_at AS signal_time
  FROM agent_transactions t LEFT JOIN trading_signals s ON s.id = t.signal_id
 WHERE t.transaction_type = 'SWAP' AND t.input_mint = $1
"""
CLOSES = """
SELECT close_reason, count(*) AS n FROM agent_historical_swaps GROUP BY close_reason
"""
TAKE_PROFIT_SALES = (
    "SELECT count(*) FROM agent_transactions WHERE transaction_type = 'SWAP' AND is_take_profit"
)
STATUSES = "SELECT status, count(*) AS n FROM signal_executions GROUP BY status"


@dataclass
class Prices:
    """The published ticks: per token (SOL/USD included) the event times (epoch ms, rising)
    and prices (USD)."""

    times: dict[str, list[int]] = field(default_factory=dict)
    prices: dict[str, list[Decimal]] = field(default_factory=dict)

    def add(self, token: str, at_ms: int, price: Decimal) -> None:
        """Record a tick (in time order per token)."""
        self.times.setdefault(token, []).append(at_ms)
        self.prices.setdefault(token, []).append(price)

    def at(self, token: str, at_ms: int) -> Decimal | None:
        """The price of the last tick of `token` at or before `at_ms`; None before the first."""
        index = bisect.bisect_right(self.times.get(token, []), at_ms)
        return self.prices[token][index - 1] if index else None


@dataclass
class Backlog:
    """The records to publish, in event-time order: (topic is prices, key, value, ms)."""

    records: list[tuple[bool, bytes, bytes, int]]
    prices: Prices
    ticks: int
    sol_ticks: int
    signals: int
    start: datetime


@dataclass
class Consumed:
    """The worker's run through the backlog, and what an operator saw meanwhile."""

    startup_s: float  # worker process start to its first write (blocked at the gate)
    seconds: float  # gate open to every offset stored
    wait: Histogram | None  # signal_worker_signal_wait_seconds over the catch-up
    late: int  # signal_worker_late_records_total
    readyz: dict[str, int]  # what /readyz answered, by answer, one read a second
    max_lag: int  # the highest signal_worker_consumer_lag total seen
    max_buffered: int  # the highest signal_worker_order_buffered_records seen
    curve: list[tuple[float, int]]  # (s since the gate opened, records stored)


@dataclass
class BuyCheck:
    """Buys made at the prices of their own time in the published stream (no look-ahead)."""

    buys: int = 0  # signal buys
    buys_at_own_time: int = 0  # ... at the token's and SOL/USD's prices at the signal's time
    dca_buys: int = 0
    dca_at_own_time: int = 0  # ... at the prices at the DCA's own time
    mismatch: str = ""  # the first buy at another price, described


@dataclass
class CatchUp:
    """A backlog consumed by a worker started after it was published."""

    span_s: int
    tokens: int
    users: int
    agents: int
    ticks: int  # token ticks
    sol_ticks: int
    signals: int
    publish_s: float
    run: Consumed
    statuses: dict[str, int]
    closes: dict[str, int]  # closed positions by close reason
    take_profit_sales: int
    check: BuyCheck

    @property
    def records(self) -> int:
        """Every record of the backlog."""
        return self.ticks + self.sol_ticks + self.signals

    @property
    def rate(self) -> float:
        """Records caught up per second."""
        return self.records / self.run.seconds if self.run.seconds > 0 else 0.0

    @property
    def exits(self) -> int:
        """Positions closed during the catch-up."""
        return sum(self.closes.values())


def make_backlog(
    users: list[User], tokens: list[str], span_s: int, every_s: float, signals: int, seed: int
) -> Backlog:
    """The backlog's records, ending now: token ticks every `every_s` seconds with distinct
    times (SOL/USD on the second, token k at +1 + k x ... ms: no two ticks share a time),
    and `signals` signals at random times after the first 5 seconds."""
    rng = random.Random(seed)
    now = datetime.now(UTC).replace(microsecond=0)
    start = now - timedelta(seconds=span_s)
    start_ms = int(start.timestamp() * 1000)
    step_ms = max(1000, int(every_s * 1000))
    if len(tokens) > step_ms - 10:
        raise BenchError(f"{len(tokens)} tokens do not fit in ticks {step_ms} ms apart")
    # A walk of whole steps of 0.1%, scaled so that the span moves as much as an hour does,
    # with a jump of about 15% once in 600 ticks (a spike or a dump: fires exits at once).
    reach = max(1, round(8 * math.sqrt(3600 / span_s * step_ms / 1000)))
    powers: dict[int, Decimal] = {}

    def power(base: Decimal, n: int) -> Decimal:
        key = n if base is _STEP else -1_000_000 - n
        if key not in powers:
            powers[key] = base**n
        return powers[key]

    prices = Prices()
    records: list[tuple[int, int, bool, bytes, bytes]] = []  # (ms, order, is_price, key, v)
    levels = [0] * len(tokens)
    bases = [Decimal("0.0005") * (1 + k % 7) for k in range(len(tokens))]
    sol_level = 0
    ticks = sol_ticks = 0
    for second in range(span_s):
        at_ms = start_ms + second * 1000
        sol_level += rng.randint(-2, 2)
        sol = (SOL_USD_START * power(_SOL_STEP, sol_level)).quantize(_PLACES)
        records.append((at_ms, 0, True, SOL_MINT.encode(), _tick(SOL_MINT, sol, at_ms)))
        prices.add(SOL_MINT, at_ms, sol)
        sol_ticks += 1
        if (second * 1000) % step_ms:
            continue
        for k, token in enumerate(tokens):
            jump = rng.choice((-150, 150)) if rng.random() < 1 / 600 else 0
            levels[k] += rng.randint(-reach, reach) + jump
            price = (bases[k] * power(_STEP, levels[k])).quantize(_PLACES)
            tick_ms = at_ms + 1 + k * (step_ms - 10) // len(tokens)
            records.append((tick_ms, 0, True, token.encode(), _tick(token, price, tick_ms)))
            prices.add(token, tick_ms, price)
            ticks += 1
    first_ms = start_ms + 5_000
    for i in range(signals):
        at_ms = rng.randrange(first_ms, start_ms + span_s * 1000)
        user = users[rng.randrange(len(users))]
        token = tokens[rng.randrange(len(tokens))]
        records.append((at_ms, 1, False, user.key, _signal(user, token, f"catchup-{i}", at_ms)))
    records.sort(key=lambda r: (r[0], r[1]))
    return Backlog(
        [(is_price, key, value, ms) for ms, _, is_price, key, value in records],
        prices,
        ticks,
        sol_ticks,
        signals,
        start,
    )


def _iso(at_ms: int) -> str:
    return datetime.fromtimestamp(at_ms / 1000, UTC).isoformat(timespec="milliseconds")


def _tick(token: str, price: Decimal, at_ms: int) -> bytes:
    return orjson.dumps({"token_address": token, "price_usd": str(price), "ts": _iso(at_ms)})


def _signal(user: User, token: str, key: str, at_ms: int) -> bytes:
    """A buy signal without a price: the buy takes its token's price from the ticks."""
    return orjson.dumps(
        {
            "user_id": str(user.user_id),
            "token_address": token,
            "signal_type": SIGNAL_TYPE,
            "signal_strength": 4,
            "symbol": "CATCH",
            "source": "benchmark",
            "idempotency_key": key,
            "created_at": _iso(at_ms),
        }
    )


async def catch_up(ctx: Context) -> CatchUp:
    """Publish the backlog with no worker running, start one, time it to the ends."""
    scale = ctx.scale
    span = scale.catchup_span_s
    ctx.progress(
        f"catch-up: {span:,}s of {scale.catchup_tokens} tokens ticking every "
        f"{scale.catchup_tick_every_s:g}s, {scale.catchup_signals:,} signals to "
        f"{scale.catchup_users} users x {len(PROFILES)} agents"
    )
    dsn = await ctx.databases.create("catchup")
    topics = await ctx.topics.create("catchup")
    conn = await connect(dsn)
    try:
        # The agents exist from before the backlog's first record (its signals are theirs).
        users = await create_users(
            conn,
            scale.catchup_users,
            len(PROFILES),
            profiles=PROFILES,
            created_at=datetime.now(UTC) - timedelta(seconds=span + 60),
        )
        await set_price(conn, SOL_MINT, SOL_USD_START)
        names = TokenNames("catchup" + ctx.tag)
        tokens = [names(i) for i in range(scale.catchup_tokens)]
        backlog = make_backlog(
            users, tokens, span, scale.catchup_tick_every_s, scale.catchup_signals, seed=27
        )
        ctx.progress(f"catch-up: publishing {len(backlog.records):,} records, no worker running")
        published = time.monotonic()
        await _publish(ctx, topics.signals, topics.prices, backlog)
        publish_s = time.monotonic() - published
        await conn.execute("ANALYZE")
        run = await _consume(ctx, conn, dsn, topics, backlog)
        check = _check_buys(await conn.fetch(BUYS, SOL_MINT), backlog.prices)
        statuses = {r["status"]: int(r["n"]) for r in await conn.fetch(STATUSES)}
        closes = {str(r["close_reason"]): int(r["n"]) for r in await conn.fetch(CLOSES)}
        take_profits = int(await conn.fetchval(TAKE_PROFIT_SALES))
    finally:
        await conn.close()
    await ctx.databases.drop(dsn)
    return CatchUp(
        span_s=span,
        tokens=len(tokens),
        users=len(users),
        agents=sum(len(u.agents) for u in users),
        ticks=backlog.ticks,
        sol_ticks=backlog.sol_ticks,
        signals=backlog.signals,
        publish_s=publish_s,
        run=run,
        statuses=statuses,
        closes=closes,
        take_profit_sales=take_profits,
        check=check,
    )


async def _publish(ctx: Context, signals: str, prices: str, backlog: Backlog) -> None:
    producer = make_producer(ctx.services.bootstrap, linger_ms=20)
    await producer.start()
    try:
        acks = []
        for n, (is_price, key, value, at_ms) in enumerate(backlog.records):
            topic = prices if is_price else signals
            acks.append(await producer.send(topic, value, key=key, timestamp_ms=at_ms))
            if len(acks) >= 20_000:
                await asyncio.gather(*acks)
                acks.clear()
                ctx.progress(f"catch-up: {n + 1:,} published", transient=True)
        await asyncio.gather(*acks)
    finally:
        await producer.stop()


class _Watch:
    """What an operator sees during the catch-up, read once a second."""

    def __init__(self, worker: WorkerProcess) -> None:
        self._worker = worker
        self.readyz: dict[str, int] = {}
        self.max_lag = 0
        self.max_buffered = 0
        self.last: Scrape | None = None

    async def run(self) -> None:
        """Read until cancelled."""
        while True:
            await self.once()
            await asyncio.sleep(MONITOR_S)

    async def once(self) -> None:
        """Read `/readyz` and `/metrics` once."""
        status, body = await http_get(self._worker.http_port, "/readyz", timeout_s=5)
        answer = "no answer" if status is None else f"{status} {body.strip()}"[:80]
        self.readyz[answer] = self.readyz.get(answer, 0) + 1
        metrics = await scrape(self._worker.http_port)
        if metrics is not None:
            self.last = metrics
            self.max_lag = max(self.max_lag, int(metrics.total(LAG)))
            self.max_buffered = max(self.max_buffered, int(metrics.total(BUFFERED)))


async def _consume(
    ctx: Context,
    conn: asyncpg.Connection,
    dsn: str,
    topics: Topics,
    backlog: Backlog,
) -> Consumed:
    want = {
        topics.prices: backlog.ticks + backlog.sol_ticks,
        topics.signals: backlog.signals,
    }
    gate = Gate(dsn, "token_prices")
    await gate.close()
    started = time.monotonic()
    worker = WorkerProcess(ctx.services, dsn, topics).start()
    watch = _Watch(worker)
    try:
        if not await gate.wait_blocked(worker):
            ctx.progress("catch-up: the worker never waited at the gate; timing from readiness")
            await gate.open()
            await worker.wait_ready()
        startup_s = time.monotonic() - started
        ready = time.monotonic()
        await gate.open()
        watcher = asyncio.create_task(watch.run())
        try:
            curve = await _until_done(ctx, conn, topics.group, want, worker, ready)
        finally:
            watcher.cancel()
        await watch.once()
        final = watch.last
    finally:
        await gate.open()
        await worker.stop()
    return Consumed(
        startup_s=startup_s,
        seconds=curve[-1][0],
        wait=final.histogram(WAIT) if final is not None else None,
        late=int(final.total(LATE)) if final is not None else 0,
        readyz=watch.readyz,
        max_lag=watch.max_lag,
        max_buffered=watch.max_buffered,
        curve=curve,
    )


async def _until_done(
    ctx: Context,
    conn: asyncpg.Connection,
    group: str,
    want: dict[str, int],
    worker: WorkerProcess,
    ready: float,
) -> list[tuple[float, int]]:
    total = sum(want.values())
    curve = [(0.0, 0)]
    limit_s = 1800.0
    while True:
        done = {topic: int(await conn.fetchval(COMMITTED, group, topic)) for topic in want}
        elapsed = time.monotonic() - ready
        stored = sum(done.values())
        if stored > curve[-1][1]:
            curve.append((elapsed, stored))
            ctx.progress(
                f"catch-up: {stored:,} of {total:,} records stored, {elapsed:5.1f}s",
                transient=True,
            )
        if all(done[t] >= n for t, n in want.items()):
            return curve
        if elapsed > limit_s:
            raise BenchError(f"catch-up: {stored:,} of {total:,} records after {elapsed:.0f}s")
        worker.check_alive()
        await asyncio.sleep(POLL_S)


def _check_buys(rows: list[asyncpg.Record], prices: Prices) -> BuyCheck:
    """Count the buys made at the prices of their own time in the published stream."""
    check = BuyCheck()
    for row in rows:
        is_dca = bool(row["is_dca"])
        when: datetime = row["transaction_time"] if is_dca else row["signal_time"]
        expected = _price_sol(prices, row["token"], _ms(when))
        same = expected == row["price_sol"]
        if is_dca:
            check.dca_buys += 1
            check.dca_at_own_time += same
        else:
            check.buys += 1
            check.buys_at_own_time += same
        if not same and not check.mismatch:
            check.mismatch = (
                f"{'DCA buy' if is_dca else 'buy'} of {row['token']} at {when.isoformat()}: "
                f"{row['price_sol']} SOL, the stream's price then {expected} SOL"
            )
    return check


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ms(when: datetime) -> int:
    """Epoch milliseconds of a stored time, rounded down (the backlog's times are whole
    milliseconds; a decision time raised by microseconds stays in its millisecond)."""
    return (when - _EPOCH) // timedelta(milliseconds=1)


def _price_sol(prices: Prices, token: str, at_ms: int) -> Decimal | None:
    token_usd, sol_usd = prices.at(token, at_ms), prices.at(SOL_MINT, at_ms)
    if token_usd is None or sol_usd is None:
        return None
    return token_price_sol(token_usd, sol_usd)
