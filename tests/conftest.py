"""Shared fixtures: real PostgreSQL and Kafka, a database and topics of its own for each test.

Services come, in this order, from:
1. the environment (`DATABASE_URL`, `KAFKA_BOOTSTRAP_SERVERS`), used as they are;
2. testcontainers (postgres:16 and apache/kafka images) when a Docker engine answers;
3. the local services of `scripts/services.sh` (started here if `make services` did not).

Each test that asks for `db_url` gets a new database cloned from a template that already
has the schema (milliseconds), dropped afterwards; `topics` gives fresh topic names.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from worker.db.migrations import default_schema_dir, load_migrations, migrate
from worker.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
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


def _docker_answers() -> bool:
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


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    env_db = os.environ.get("DATABASE_URL")
    env_kafka = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if env_db and env_kafka:
        yield Services(env_db, env_kafka, "environment", restartable=False)
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer
        from testcontainers.postgres import PostgresContainer

        with (
            PostgresContainer(POSTGRES_IMAGE, driver=None) as pg,
            KafkaContainer(KAFKA_IMAGE).with_kraft() as kafka,
        ):
            yield Services(
                env_db or pg.get_connection_url(),
                env_kafka or kafka.get_bootstrap_server(),
                "testcontainers",
                restartable=False,
            )
        return
    # No Docker engine: the local services, started if `make services` has not.
    subprocess.run([str(SERVICES_SCRIPT), "up"], check=True)
    pg_port = os.environ.get("LOCAL_PG_PORT", "5432")
    kafka_port = os.environ.get("LOCAL_KAFKA_PORT", "9092")
    yield Services(
        env_db or f"postgresql://postgres@127.0.0.1:{pg_port}/signals",
        env_kafka or f"127.0.0.1:{kafka_port}",
        "local",
        restartable=not (env_db or env_kafka),
    )


@pytest.fixture(scope="session")
async def template_db(services: Services) -> AsyncIterator[str]:
    """A database with every migration applied, cloned by each test's `db_url`."""
    name = f"sw_tmpl_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(services.database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        conn = await asyncpg.connect(services.with_database(name))
        try:
            await migrate(conn, load_migrations(default_schema_dir()))
        finally:
            await conn.close()
        yield name
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


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


@pytest.fixture
async def db_url(services: Services, template_db: str) -> AsyncIterator[str]:
    """The DSN of a fresh database of this test's own, with the schema applied."""
    url = await create_database(services, template_db)
    yield url
    await drop_database(services, url)


@pytest.fixture
async def db_conn(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to this test's own database."""
    conn = await asyncpg.connect(db_url)
    try:
        yield conn
    finally:
        await conn.close()


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


@pytest.fixture
async def topics(services: Services) -> AsyncIterator[Topics]:
    """Fresh topics (3 partitions each) and a consumer group of this test's own."""
    names = await create_test_topics(services)
    yield names
    await delete_topics(services.kafka_bootstrap, [names.signals, names.prices, names.dlq])


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


@pytest.fixture(scope="session")
def own_services(services: Services) -> Iterator[OwnServices]:
    """Restartable services of the tests' own; skips where services come from outside."""
    if services.source != "local":
        pytest.skip(
            f"services come from {services.source}; they cannot be stopped and started by the tests"
        )
    env = {
        k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS")
    }
    pg, kafka, controller, sasl = own_ports()
    env.update(
        SERVICES_DIR=str(ROOT / ".services" / "faults"),
        LOCAL_PG_PORT=str(pg),
        LOCAL_KAFKA_PORT=str(kafka),
        LOCAL_KAFKA_CONTROLLER_PORT=str(controller),
        LOCAL_KAFKA_SASL_PORT=str(sasl),
    )
    own = OwnServices(
        Services(
            f"postgresql://postgres@127.0.0.1:{pg}/signals",
            f"127.0.0.1:{kafka}",
            "own",
            restartable=True,
        ),
        env,
    )
    own.run("up")
    yield own
    # Disposable: their data goes too (it may live outside the checkout, under /var/tmp).
    own.run("purge")
