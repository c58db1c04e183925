"""Helpers for the tests, all of them: services, databases and topics; users and agents;
publishing; workers; the CLI; certificates. (Fixtures are in `tests/conftest.py`; rows for
the schema's own tests in `tests/builders.py`.)"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from pydantic import SecretStr

from worker.app import run_worker
from worker.db import accounts
from worker.domain.models import SOL_MINT
from worker.metrics import Metrics
from worker.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
# Valid base58 mint addresses for tests (not real tokens).
TOKEN_A = "7GCihgDB8fe6KNjn2MYtkzZcRjQy3t9GHdC8uHYmW2hr"
TOKEN_B = "DezXAZ8z7PnrnRJjz3wXBoRgixCa6xjnB7YaB1pPB263"
TOKEN_C = "EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v"
# When `make_account`'s agents are created: before any signal of any test.
LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)


@dataclass
class Account:
    """A user and its funded simulation agents."""

    user_id: uuid.UUID
    agents: list[accounts.FundedAgent] = field(default_factory=list)


async def make_account(
    conn: asyncpg.Connection,
    configs: Sequence[dict[str, Any] | None] = (None,),
    *,
    deposit_sol: Decimal = Decimal(10),
    deposits: Sequence[Decimal] | None = None,
    created_at: datetime | None = LONG_AGO,
    **agent_kwargs: Any,
) -> Account:
    """A user with one funded simulation agent per config, created at `created_at`.

    An agent is decided only for signals made from its creation on, and tests date their
    signals freely (fixed times, hours ago): so the agents are made long before, unless
    `created_at` says otherwise (None: the database's `now()`)."""
    user_id = await accounts.create_user(conn, f"u{uuid.uuid4().hex[:12]}@test.local")
    account = Account(user_id)
    for i, config in enumerate(configs):
        amount = deposits[i] if deposits is not None else deposit_sol
        agent = await accounts.create_funded_agent(
            conn,
            user_id,
            f"agent {i}",
            deposit_sol=amount,
            trading_config=config,
            **agent_kwargs,
        )
        if created_at is not None:
            await conn.execute(
                "UPDATE agents SET created_at = $2 WHERE id = $1", agent.agent_id, created_at
            )
        account.agents.append(agent)
    return account


async def set_price(conn: asyncpg.Connection, token: str, price_usd: Decimal | str) -> None:
    """Store a latest price directly (as a processed tick would)."""
    await conn.execute(
        "INSERT INTO token_prices (token_address, price_usd, price_ts) VALUES ($1, $2, now()) "
        "ON CONFLICT (token_address) DO UPDATE SET price_usd = $2, price_ts = now()",
        token,
        Decimal(price_usd),
    )


async def set_sol_price(conn: asyncpg.Connection, price_usd: Decimal | str = "100") -> None:
    """Store the SOL/USD price."""
    await set_price(conn, SOL_MINT, price_usd)


def signal_message(user_id: uuid.UUID, token: str = TOKEN_A, **fields: Any) -> dict[str, Any]:
    """A valid signal message; `fields` override or add."""
    message: dict[str, Any] = {
        "user_id": str(user_id),
        "token_address": token,
        "signal_type": "Velocity (Dex Boost Detection)",
        "signal_strength": 4,
        "price_usd": "0.5",
    }
    message.update(fields)
    return message


async def publish(
    bootstrap: str,
    topic: str,
    values: Sequence[bytes | dict[str, Any]],
    *,
    key: Callable[[bytes | dict[str, Any]], bytes | None] | None = None,
) -> None:
    """Send each value (dicts as JSON) and wait for every acknowledgement."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_request_size=4_000_000
    )
    await producer.start()
    try:
        futures = []
        for value in values:
            raw = value if isinstance(value, bytes) else json.dumps(value).encode()
            k = (
                key(value)
                if key
                else (str(value.get("user_id", "")).encode() if isinstance(value, dict) else None)
            )
            futures.append(await producer.send(topic, raw, key=k))
        for f in futures:
            await f
    finally:
        await producer.stop()


async def read_topic(bootstrap: str, topic: str, expected: int, timeout_s: float = 20) -> list[Any]:
    """Read `expected` records from the start of `topic` (fewer if the time runs out)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    records: list[Any] = []
    try:
        with contextlib.suppress(TimeoutError):  # fewer than expected: the caller asserts
            async with asyncio.timeout(timeout_s):
                while len(records) < expected:
                    batch = await consumer.getmany(timeout_ms=500)
                    for recs in batch.values():
                        records.extend(recs)
    finally:
        await consumer.stop()
    return records


async def wait_for(
    check: Callable[[], Awaitable[bool]], *, timeout_s: float = 30, what: str = "condition"
) -> None:
    """Poll `check` until it holds; fail the test with `what` after `timeout_s` (a bound)."""
    try:
        async with asyncio.timeout(timeout_s):
            while True:  # polling another process's work: no event to wait on
                if await check():
                    return
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout_s}s waiting for {what}") from None


async def count(db_url: str, sql: str, *args: Any) -> int:
    """Run a count query on a fresh connection."""
    conn = await asyncpg.connect(db_url)
    try:
        value: int = await conn.fetchval(sql, *args)
        return value
    finally:
        await conn.close()


async def wait_for_count(
    db_url: str, sql: str, expected: int, *args: Any, timeout_s: float = 30
) -> None:
    """Wait until `sql` counts `expected`."""
    seen = -1

    async def check() -> bool:
        nonlocal seen
        seen = await count(db_url, sql, *args)
        return seen >= expected

    try:
        await wait_for(check, timeout_s=timeout_s, what=f"{expected} from {sql!r}")
    except AssertionError as exc:
        raise AssertionError(f"{exc} (last count {seen})") from None


@contextlib.asynccontextmanager
async def running_worker(
    settings: Settings, metrics: Metrics | None = None
) -> AsyncIterator[tuple[asyncio.Task[int], int]]:
    """An in-process worker until the block ends (then drained); yields (task, http port)."""
    stop = asyncio.Event()
    started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run_worker(settings, stop, metrics=metrics, started=started))
    done, _ = await asyncio.wait({task, started}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()
        raise AssertionError("the worker stopped during start-up")
    if started not in done:
        task.cancel()
        raise AssertionError("the worker did not start within 30s")
    try:
        yield task, started.result()
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=15)


class WorkerProcess:
    """`python -m worker run` as a subprocess, with its stderr kept for inspection."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.lines: list[str] = []
        self._reader: threading.Thread | None = None
        self.http_port: int | None = None

    def start(self) -> WorkerProcess:
        """Start it; returns at once (see `wait_started`)."""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "run"],
            env=self.env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            self.lines.append(line)
            if '"worker_started"' in line:
                port = re.search(r'"http_port": (\d+)', line)
                if port:
                    self.http_port = int(port.group(1))

    async def wait_started(self, timeout_s: float = 30) -> None:
        """Wait until the worker logged `worker_started` (at most `timeout_s`)."""
        try:
            async with asyncio.timeout(timeout_s):
                while self.http_port is None:
                    if self.proc is not None and self.proc.poll() is not None:
                        msg = f"worker exited with {self.proc.returncode}:\n{self.tail()}"
                        raise AssertionError(msg)
                    await asyncio.sleep(0.05)
        except TimeoutError:
            msg = f"worker did not start in {timeout_s}s:\n{self.tail()}"
            raise AssertionError(msg) from None

    def kill(self) -> None:
        """SIGKILL: no drain, no goodbye."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self._close()

    def terminate(self, timeout_s: float = 15) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        finally:
            if self.proc.poll() is None:
                self.kill()
            self._close()

    def _close(self) -> None:
        if self._reader is not None:
            self._reader.join(timeout=5)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()

    def tail(self, n: int = 30) -> str:
        """The last `n` lines of its stderr."""
        return "\n".join(self.lines[-n:])


def env_for(settings: Settings) -> dict[str, str]:
    """The environment of a worker subprocess with the same settings as `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    # Every setting the test chose (make_settings' overrides included) reaches the process.
    for name in settings.model_fields_set:
        value = getattr(settings, name)
        if value is not None:
            plain = value.get_secret_value() if isinstance(value, SecretStr) else value
            env[name.upper()] = str(plain)
    env.update(
        DATABASE_URL=settings.database_url.get_secret_value(),
        KAFKA_BOOTSTRAP_SERVERS=settings.kafka_bootstrap_servers,
        SIGNALS_TOPIC=settings.signals_topic,
        PRICES_TOPIC=settings.prices_topic,
        DLQ_TOPIC=settings.dlq_topic,
        CONSUMER_GROUP=settings.consumer_group,
        HTTP_PORT="0",
        LOG_FORMAT="json",
        KAFKA_TOPIC_PARTITIONS="3",
    )
    return env


class CliRun(NamedTuple):
    """What one `python -m worker ...` run left: exit code, stdout, stderr lines."""

    code: int
    stdout: str
    stderr: list[str]


async def run_cli(env: dict[str, str], *args: str, timeout_s: float = 90) -> CliRun:
    """`python -m worker ARGS` in `env` without blocking the event loop."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        *args,
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=timeout_s)
    assert proc.returncode is not None
    return CliRun(proc.returncode, out.decode(), err.decode().splitlines())


def assert_log_lines_then_one_error(lines: list[str], command: str) -> str:
    """No traceback, every line but the last a JSON log line; returns the last line."""
    assert lines, "nothing on stderr"
    assert not any("Traceback" in line for line in lines), "\n".join(lines)
    *logs, last = lines
    for line in logs:
        assert isinstance(json.loads(line), dict), line
    assert last.startswith(f"signal-worker {command}: "), last
    return last


def make_certificate(
    folder: Path, name: str, *, common_name: str | None = None, ip: str | None = "127.0.0.1"
) -> tuple[Path, Path]:
    """A self-signed certificate `NAME.pem` (CN `common_name`, else `name`; for `ip` unless
    None) and its key `NAME.key`, made with openssl; skips the test without openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    subject = ["-subj", f"/CN={common_name or name}"]
    alt_name = ["-addext", f"subjectAltName=IP:{ip}"] if ip is not None else []
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            *subject,
            *alt_name,
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


# ---------------------------------------------------------------------------- services

SERVICES_SCRIPT = ROOT / "scripts" / "services.sh"
KAFKA_IMAGE = "apache/kafka:4.4.0"
POSTGRES_IMAGE = "postgres:16"


@dataclass(frozen=True)
class Services:
    """Where the tests' PostgreSQL and Kafka are, and whether the tests may restart them."""

    database_url: str
    kafka_bootstrap: str
    source: str
    restartable: bool

    def with_database(self, name: str) -> str:
        """The DSN of database `name` on the same server."""
        parts = urlsplit(self.database_url)
        return urlunsplit(parts._replace(path=f"/{name}"))


def docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        result = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


async def create_database(services: Services, template: str) -> str:
    """A new database cloned from `template`; returns its DSN."""
    name = f"sw_t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(services.database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    finally:
        await admin.close()
    return services.with_database(name)


async def drop_database(services: Services, url: str) -> None:
    """Drop the database of `url`, disconnecting whoever is still on it."""
    name = urlsplit(url).path.lstrip("/")
    admin = await asyncpg.connect(services.database_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@dataclass(frozen=True)
class Topics:
    """Topic and group names of this test's own."""

    signals: str
    prices: str
    dlq: str
    group: str


async def create_topics(bootstrap: str, names: list[str], partitions: int) -> None:
    """Create `names` with `partitions` partitions each (replication 1)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, partitions, 1) for n in names])
    finally:
        await admin.close()


async def delete_topics(bootstrap: str, names: list[str]) -> None:
    """Delete `names`; missing ones are fine."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics(names)
    finally:
        await admin.close()


async def create_test_topics(services: Services, partitions: int = 3) -> Topics:
    """Fresh signal, price and dead-letter topics and a consumer group name."""
    tag = uuid.uuid4().hex[:10]
    names = Topics(f"t{tag}.signals", f"t{tag}.prices", f"t{tag}.dlq", f"g{tag}")
    await create_topics(
        services.kafka_bootstrap, [names.signals, names.prices, names.dlq], partitions
    )
    return names


def make_settings(services: Services, db_url: str, topics: Topics, **overrides: Any) -> Settings:
    """Settings pointing at this test's database and topics; `overrides` by field name."""
    fields: dict[str, Any] = {
        "database_url": db_url,
        "kafka_bootstrap_servers": services.kafka_bootstrap,
        "signals_topic": topics.signals,
        "prices_topic": topics.prices,
        "dlq_topic": topics.dlq,
        "consumer_group": topics.group,
        "http_port": 0,
        "log_format": "json",
        **overrides,
    }
    return Settings(**fields)


@dataclass(frozen=True)
class OwnServices:
    """A PostgreSQL and a Kafka of the tests' own that fault tests may stop and start.

    Started by `scripts/services.sh` on other ports and in another folder than the shared
    ones, so stopping them disturbs no other test.
    """

    services: Services
    env: dict[str, str]

    def run(self, *args: str) -> None:
        """`scripts/services.sh ARGS` for these services."""
        subprocess.run([str(SERVICES_SCRIPT), *args], env=self.env, check=True, capture_output=True)

    def stop(self, name: str) -> None:
        """Stop `kafka` or `postgres`."""
        self.run("stop", name)

    def start(self, name: str) -> None:
        """Start `kafka` or `postgres` again (same data)."""
        self.run("start", name)


def own_ports(root: Path = ROOT) -> tuple[int, int, int, int]:
    """Ports of the own services (PostgreSQL, Kafka, its controller, its SASL listener).

    Stable for a checkout and different between checkouts (derived from its path), so that
    the test sessions of two clones on one machine never stop each other's services. Below
    Linux's ephemeral range (32768 up), where clients' own sockets would collide.
    """
    digest = int.from_bytes(hashlib.sha256(str(root.resolve()).encode()).digest()[:8], "big")
    base = 20_000 + (digest % 3_000) * 4
    return base, base + 1, base + 2, base + 3
