"""Databases of the tests' own (cloned from a migrated template, dropped after) and the
few queries the tests read them with."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterable
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from tests.helpers.services import Services
from worker.db.migrations import default_schema_dir, load_migrations, migrate


@contextlib.asynccontextmanager
async def connected(url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to `url` for the block, closed after it whatever happens."""
    conn = await asyncpg.connect(url)
    try:
        yield conn
    finally:
        await conn.close()


def database_name(url: str) -> str:
    """The database a DSN names."""
    return urlsplit(url).path.lstrip("/")


async def create_database(services: Services, template: str | None = None) -> str:
    """A new database on `services`, a clone of `template` or else empty; returns its DSN."""
    name = f"sw_t_{uuid.uuid4().hex[:12]}"
    clone = f' TEMPLATE "{template}"' if template else ""
    async with connected(services.database_url) as admin:
        await admin.execute(f'CREATE DATABASE "{name}"{clone}')
    return services.with_database(name)


async def create_migrated(services: Services) -> str:
    """A new database on `services` with every migration applied; returns its DSN."""
    url = await create_database(services)
    async with connected(url) as conn:
        await migrate(conn, load_migrations(default_schema_dir()))
    return url


async def create_template(services: Services) -> str:
    """A migrated database for others to be cloned from; returns its name."""
    return database_name(await create_migrated(services))


async def drop_database(services: Services, url: str) -> None:
    """Drop the database of `url`, disconnecting whoever is still on it."""
    async with connected(services.database_url) as admin:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database_name(url)}" WITH (FORCE)')


async def count(db_url: str, sql: str, *args: Any) -> int:
    """Run a count query on a fresh connection."""
    async with connected(db_url) as conn:
        value: int = await conn.fetchval(sql, *args)
    return value


async def stored_offsets(db_url: str, group: str, topic: str) -> dict[int, int]:
    """`consumer_offsets` of `group` on `topic`, by partition."""
    async with connected(db_url) as conn:
        rows = await conn.fetch(
            "SELECT partition, next_offset FROM consumer_offsets "
            "WHERE consumer_group = $1 AND topic = $2",
            group,
            topic,
        )
    return {r["partition"]: r["next_offset"] for r in rows}


async def stored_prices(conn: asyncpg.Connection, tokens: Iterable[str]) -> dict[str, Decimal]:
    """The stored latest price of each of `tokens`."""
    rows = await conn.fetch(
        "SELECT token_address, price_usd FROM token_prices WHERE token_address = ANY($1)",
        list(tokens),
    )
    return {r["token_address"]: r["price_usd"] for r in rows}
