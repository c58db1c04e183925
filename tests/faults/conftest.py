"""The fault suite's fixtures and measurements: what was expected, what the ledger holds.

Every scenario states the signals it published as `(user_id, idempotency key) -> agents`
and `measure` compares that with the rows: an expected (signal, agent) pair without an
execution is *lost*, a second row for a pair (or a second signal row for a key) is
*duplicated*, a pair nobody asked for is *unexpected*. `report` prints one figures line
per scenario, and the terminal summary repeats them all at the end of the run.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.support import (
    Account,
    OwnServices,
    Services,
    WorkerProcess,
    create_database,
    drop_database,
    make_account,
    set_sol_price,
)
from worker.db.ledger import Violation, find_violations
from worker.db.migrations import default_schema_dir, load_migrations, migrate
from worker.domain.models import SOL_MINT
from worker.logging import REPEATED_EVENTS

FIGURES = pytest.StashKey[list[str]]()
BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
EXECUTIONS = "SELECT count(*) FROM signal_executions"

Report = Callable[..., None]


# ---------------------------------------------------------------------------- figures


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Repeat every scenario's figures line at the end of the run (and of the CI log)."""
    lines = config.stash.get(FIGURES, [])
    if lines:
        terminalreporter.section("fault scenarios")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Report:
    """`report(scenario, **figures)`: print one figures line and keep it for the summary."""
    lines = request.config.stash.setdefault(FIGURES, [])

    def _report(scenario: str, **figures: object) -> None:
        line = f"[faults] {scenario}: " + ", ".join(f"{k}={v}" for k, v in figures.items())
        print(line)
        lines.append(line)

    return _report


def seeded(name: str) -> tuple[int, random.Random]:
    """A random seed for `name`, or `FAULTS_SEED`'s: printed with the figures, to replay."""
    given = os.environ.get("FAULTS_SEED")
    seed = int(given) if given else random.SystemRandom().randrange(2**32)
    return seed, random.Random(f"{name}:{seed}")


# ---------------------------------------------------------------------------- the ledger


@dataclass(frozen=True)
class Ledger:
    """What the database holds against what the scenario published."""

    executions: int
    lost: int
    duplicated: int
    unexpected: int
    violations: list[Violation] = field(default_factory=list)

    @property
    def check(self) -> str:
        """`find_violations` in a few words, for the figures line."""
        if not self.violations:
            return "ok"
        return f"{len(self.violations)} violations, first: {self.violations[0].message}"

    @property
    def figures(self) -> dict[str, object]:
        """The ledger's part of a `report` line: executions, lost, duplicated, check."""
        return {
            "executions": self.executions,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "check": self.check,
        }


Expected = Mapping[tuple[uuid.UUID, str], Iterable[uuid.UUID]]

EXECUTED_PAIRS = """
SELECT s.user_id, s.idempotency_key, e.agent_id
  FROM signal_executions e JOIN trading_signals s ON s.id = e.signal_id
"""
SIGNAL_KEYS = "SELECT user_id, idempotency_key FROM trading_signals"


async def measure(conn: asyncpg.Connection, expected: Expected) -> Ledger:
    """Count lost, duplicated and unexpected executions, and run the ledger invariants."""
    wanted = {(user, key, agent) for (user, key), agents in expected.items() for agent in agents}
    executed = await conn.fetch(EXECUTED_PAIRS)
    rows = Counter((r["user_id"], r["idempotency_key"], r["agent_id"]) for r in executed)
    signals = Counter((r["user_id"], r["idempotency_key"]) for r in await conn.fetch(SIGNAL_KEYS))
    return Ledger(
        executions=await conn.fetchval(EXECUTIONS),
        lost=len(wanted - rows.keys()),
        duplicated=sum(n - 1 for n in rows.values()) + sum(n - 1 for n in signals.values()),
        unexpected=len(rows.keys() - wanted),
        violations=await find_violations(conn),
    )


def assert_exactly_once(ledger: Ledger) -> None:
    """Nothing lost, nothing doubled, nothing invented, every invariant holds."""
    assert ledger.lost == 0, f"{ledger.lost} (signal, agent) pairs have no execution"
    assert ledger.duplicated == 0, f"{ledger.duplicated} duplicated executions or signals"
    assert ledger.unexpected == 0, f"{ledger.unexpected} executions nobody asked for"
    assert ledger.violations == [], "\n".join(v.message for v in ledger.violations)


# ---------------------------------------------------------------------------- the stream


def mint(rng: random.Random) -> str:
    """A valid (made-up) Solana mint address: 44 base58 characters."""
    return "".join(rng.choice(BASE58) for _ in range(44))


@dataclass
class Book:
    """Users with their agents, and the signals published for them."""

    accounts: list[Account]
    expected: dict[tuple[uuid.UUID, str], list[uuid.UUID]] = field(default_factory=dict)

    def agents_of(self, account: Account) -> list[uuid.UUID]:
        """The agent ids of one account."""
        return [a.agent_id for a in account.agents]

    def signals(
        self, per_user: int, tokens: Sequence[str], *, start: int = 0, keyed: bool = True
    ) -> list[dict[str, Any]]:
        """`per_user` signals for each user, round robin; each remembered as expected.

        Every fourth one carries no price (the token's price then comes from the ticks).
        With `keyed=False` they carry no idempotency key (so the key is the record's
        coordinates, and `expected` is left to the caller).
        """
        out: list[dict[str, Any]] = []
        for i in range(start, start + per_user):
            for u, account in enumerate(self.accounts):
                message: dict[str, Any] = {
                    "user_id": str(account.user_id),
                    "token_address": tokens[(i * 7 + u) % len(tokens)],
                    "signal_type": "Velocity (Dex Boost Detection)",
                    "signal_strength": 1 + (i + u) % 5,
                    "symbol": f"T{(i * 7 + u) % len(tokens)}",
                }
                if i % 4:
                    message["price_usd"] = str(Decimal(1 + (i * 13 + u) % 97) / 100)
                if keyed:
                    key = f"fault-{i}"
                    message["idempotency_key"] = key
                    self.expected[(account.user_id, key)] = self.agents_of(account)
                out.append(message)
        return out


async def make_book(
    conn: asyncpg.Connection, users: int, agents: int, deposit_sol: Decimal = Decimal(10)
) -> Book:
    """`users` users with `agents` funded simulation agents each, and a SOL price."""
    await set_sol_price(conn, "100")
    return Book(
        [await make_account(conn, [None] * agents, deposit_sol=deposit_sol) for _ in range(users)]
    )


@dataclass(frozen=True)
class Tick:
    """A price tick as published."""

    token_address: str
    price_usd: Decimal
    ts: datetime

    def message(self) -> dict[str, Any]:
        """The JSON of contract section 4."""
        return {
            "token_address": self.token_address,
            "price_usd": str(self.price_usd),
            "ts": self.ts.isoformat(),
        }


def ticks(rng: random.Random, tokens: Sequence[str], n: int) -> list[Tick]:
    """`n` ticks over the tokens and SOL, timestamps strictly increasing from now on."""
    start = datetime.now(UTC) + timedelta(seconds=1)
    out = []
    for i in range(n):
        token = SOL_MINT if i % 5 == 0 else rng.choice(tokens)
        low, high = (50, 150) if token == SOL_MINT else (1, 200)
        price = Decimal(rng.randrange(low * 100, high * 100)) / 100
        out.append(Tick(token, price, start + timedelta(milliseconds=i)))
    return out


def latest_prices(published: Iterable[Tick]) -> dict[str, Decimal]:
    """The price each token must end with: its newest tick's."""
    newest: dict[str, Tick] = {}
    for t in published:
        if t.token_address not in newest or t.ts > newest[t.token_address].ts:
            newest[t.token_address] = t
    return {token: t.price_usd for token, t in newest.items()}


async def stored_prices(conn: asyncpg.Connection, tokens: Iterable[str]) -> dict[str, Decimal]:
    """The stored latest price of each of `tokens`."""
    rows = await conn.fetch(
        "SELECT token_address, price_usd FROM token_prices WHERE token_address = ANY($1)",
        list(tokens),
    )
    return {r["token_address"]: r["price_usd"] for r in rows}


# ---------------------------------------------------------------------------- Kafka


@dataclass(frozen=True)
class Sent:
    """Where one published record went."""

    partition: int
    offset: int


def encode(value: bytes | dict[str, Any] | None) -> bytes | None:
    """Dicts as JSON, bytes (and None, a record without a value) as they are."""
    return orjson.dumps(value) if isinstance(value, dict) else value


def user_key(value: bytes | dict[str, Any] | None) -> bytes | None:
    """The key of contract section 3: the user id of a signal; none for anything else."""
    if isinstance(value, dict) and "user_id" in value:
        return str(value["user_id"]).encode()
    if isinstance(value, dict) and "token_address" in value:
        return str(value["token_address"]).encode()
    return None


async def send_all(
    bootstrap: str,
    topic: str,
    values: Sequence[bytes | dict[str, Any] | None],
    *,
    keys: Sequence[bytes | None] | None = None,
    headers: Sequence[list[tuple[str, bytes]] | None] | None = None,
) -> list[Sent]:
    """Publish every value in order, wait for every acknowledgement, return where each went."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_request_size=4_000_000
    )
    try:
        await producer.start()
        futures = []
        for i, value in enumerate(values):
            key = keys[i] if keys is not None else user_key(value)
            futures.append(
                await producer.send(
                    topic,
                    encode(value),
                    key=key,
                    headers=headers[i] if headers is not None else None,
                )
            )
        metadata = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return [Sent(m.partition, m.offset) for m in metadata]


@dataclass
class Feed:
    """A paced stream: `chunks` slices of every (topic, values) pair, published in turn
    `pause_s` apart, that stops before chunk `hold_at` until `release()`.

    The hold is what makes a fault land mid-stream on any machine: whatever the worker's
    speed, the part after the hold is published only once the fault has been injected, so
    the stream goes on after it. `held` is set when the feed reaches the hold.
    """

    bootstrap: str
    streams: Sequence[tuple[str, Sequence[dict[str, Any]]]]
    chunks: int
    hold_at: int
    pause_s: float = 0.25
    held: asyncio.Event = field(default_factory=asyncio.Event)
    _released: asyncio.Event = field(default_factory=asyncio.Event)

    def chunk(self, values: Sequence[Any], c: int) -> Sequence[Any]:
        return values[c * len(values) // self.chunks : (c + 1) * len(values) // self.chunks]

    def before_hold(self, values: Sequence[Any]) -> int:
        """How many of `values` are published before the hold."""
        return self.hold_at * len(values) // self.chunks

    def release(self) -> None:
        self._released.set()

    async def run(self) -> None:
        for c in range(self.chunks):
            if c == self.hold_at:
                self.held.set()
                await self._released.wait()
            for topic, values in self.streams:
                await send_all(self.bootstrap, topic, self.chunk(values, c))
            await asyncio.sleep(self.pause_s)
        self.held.set()


async def read_all(bootstrap: str, topic: str, timeout_s: float = 60) -> list[Any]:
    """Every record of `topic` up to its end offsets at the time of the call."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        group_id=None,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4_000_000,
        fetch_max_bytes=16_000_000,
    )
    try:
        await consumer.start()
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        assert partitions, f"topic {topic} has no partitions"
        ends = await consumer.end_offsets(partitions)
        records: list[Any] = []
        async with asyncio.timeout(timeout_s):
            while sum(ends.values()) > len(records):
                batch = await consumer.getmany(timeout_ms=500)
                for tp, recs in batch.items():
                    records.extend(r for r in recs if r.offset < ends[tp])
        return records
    finally:
        await consumer.stop()


async def stored_offsets(db_url: str, group: str, topic: str) -> dict[int, int]:
    """`consumer_offsets` of `group` on `topic`, by partition."""
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch(
            "SELECT partition, next_offset FROM consumer_offsets "
            "WHERE consumer_group = $1 AND topic = $2",
            group,
            topic,
        )
    finally:
        await conn.close()
    return {r["partition"]: r["next_offset"] for r in rows}


# ---------------------------------------------------------------------------- workers


def log_events(worker: WorkerProcess, event: str) -> list[dict[str, Any]]:
    """The worker's JSON log lines of one event."""
    marker = f'"{event}"'
    out = []
    for line in worker.lines:
        if marker in line:
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if entry.get("event") == event:
                out.append(entry)
    return out


def repeated_lines(worker: WorkerProcess) -> tuple[int, int, str]:
    """(warning and error lines in all, the most lines of one kind, that kind): a kind is a
    library's (logger, message) or one of the worker's lines a lasting condition repeats
    (`worker.logging.REPEATED_EVENTS`); lines naming a record or an agent are not counted."""
    kinds: Counter[str] = Counter()
    total = 0
    for line in worker.lines:
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(entry, dict) or entry.get("level") not in {"warning", "error"}:
            continue
        total += 1
        if "logger" in entry:
            kinds[f"{entry['logger']}: {str(entry.get('event'))[:60]}"] += 1
        elif entry.get("event") in REPEATED_EVENTS:
            kinds[f"{entry['event']} ({entry.get('cause')})"] += 1
    if not kinds:
        return total, 0, ""
    kind, most = kinds.most_common(1)[0]
    return total, most, kind


def starts(worker: WorkerProcess) -> int:
    """How many times this process logged `worker_started` (a restart would log it again)."""
    return len(log_events(worker, "worker_started"))


def terminate_within(worker: WorkerProcess, bound_s: float) -> int:
    """SIGTERM; the exit code, or a failure with the worker's last lines past `bound_s`."""
    try:
        return worker.terminate(timeout_s=bound_s)
    except subprocess.TimeoutExpired:
        own = [line for line in worker.lines if '"logger": "aiokafka' not in line]
        raise AssertionError(
            f"the worker had not exited {bound_s}s after SIGTERM (killed); its last lines "
            "but aiokafka's:\n" + "\n".join(own[-25:])
        ) from None


async def http_status(port: int, path: str) -> tuple[int, str]:
    """GET `path` on the worker's HTTP port: (status, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body.decode("utf-8", "replace").strip()


# ---------------------------------------------------------------------------- own services


async def assert_down(host: str, port: int, name: str) -> None:
    """Fail unless nothing accepts connections on `port` (the fault really was injected)."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=5)
    except (OSError, TimeoutError):
        return
    writer.close()
    await writer.wait_closed()
    raise AssertionError(
        f"{name} still answers on {host}:{port} after the stop (did another test session "
        "start it again? the own services are shared by every session in this checkout)"
    )


async def stop_own(own: OwnServices, name: str) -> None:
    """Stop `kafka` or `postgres` (off the event loop) and fail unless it really is down."""
    await asyncio.to_thread(own.stop, name)
    if name == "postgres":
        db = urlsplit(own.services.database_url)
        await assert_down(db.hostname or "127.0.0.1", db.port or 5432, "PostgreSQL")
    else:
        host, port = own.services.kafka_bootstrap.rsplit(":", 1)
        await assert_down(host, int(port), "Kafka")


async def create_template(services: Services) -> str:
    """A database on `services` with every migration applied; returns its name."""
    name = f"sw_tmpl_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(services.database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    conn = await asyncpg.connect(services.with_database(name))
    try:
        await migrate(conn, load_migrations(default_schema_dir()))
    finally:
        await conn.close()
    return name


@pytest.fixture(scope="session")
async def own_template(own_services: OwnServices) -> AsyncIterator[str]:
    """A migrated template database on the fault suite's own PostgreSQL."""
    name = await create_template(own_services.services)
    yield name
    own_services.start("postgres")  # a failed scenario may have left it stopped
    admin = await asyncpg.connect(own_services.services.database_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def own_db_url(own_services: OwnServices, own_template: str) -> AsyncIterator[str]:
    """A fresh database of this test's own on the fault suite's own PostgreSQL."""
    url = await create_database(own_services.services, own_template)
    yield url
    own_services.start("postgres")
    own_services.start("kafka")
    await drop_database(own_services.services, url)
