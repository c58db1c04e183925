"""Shared fixtures: real PostgreSQL and Kafka, a database and topics of its own for each test.

Services come, in this order, from:
1. the environment (`DATABASE_URL`, `KAFKA_BOOTSTRAP_SERVERS`), used as they are;
2. testcontainers (postgres:16 and apache/kafka images) when a Docker engine answers;
3. the local services of `scripts/services.sh` (started here if `make services` did not).

Each test that asks for `db_url` gets a new database cloned from a template that already
has the schema (milliseconds), dropped afterwards; `topics` gives fresh topic names. The
helpers these fixtures use live in `tests/helpers/` (`services`, `db`, `kafka`).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from tests.helpers.db import connected, create_database, create_template, drop_database
from tests.helpers.kafka import Topics, create_test_topics, delete_topics
from tests.helpers.services import (
    KAFKA_IMAGE,
    POSTGRES_IMAGE,
    ROOT,
    SERVICES_SCRIPT,
    OwnServices,
    Services,
    docker_answers,
    own_ports,
)


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    env_db = os.environ.get("DATABASE_URL")
    env_kafka = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if env_db and env_kafka:
        yield Services(env_db, env_kafka, "environment", restartable=False)
        return
    if docker_answers():
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
    name = await create_template(services)
    yield name
    await drop_database(services, services.with_database(name))


@pytest.fixture
async def empty_db(services: Services) -> AsyncIterator[str]:
    """The DSN of a new database with nothing in it (not even the schema: `migrate` has
    never run there), dropped after the test whatever it did."""
    url = await create_database(services)
    try:
        yield url
    finally:
        await drop_database(services, url)


@pytest.fixture
async def db_url(services: Services, template_db: str) -> AsyncIterator[str]:
    """The DSN of a fresh database of this test's own, with the schema applied."""
    url = await create_database(services, template_db)
    yield url
    await drop_database(services, url)


@pytest.fixture
async def db_conn(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to this test's own database."""
    async with connected(db_url) as conn:
        yield conn


@pytest.fixture
async def topics(services: Services) -> AsyncIterator[Topics]:
    """Fresh topics (3 partitions each) and a consumer group of this test's own."""
    names = await create_test_topics(services)
    yield names
    await delete_topics(
        services.kafka_bootstrap,
        [names.signals, names.prices, names.dlq, names.commands, names.events],
    )


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
