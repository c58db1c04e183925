"""Databases of the tests' own (cloned from a migrated template, dropped after) and the
few queries the tests read them with."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from tests.helpers.services import Services
from worker.db.migrations import default_schema_dir, load_migrations, migrate


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


async def count(db_url: str, sql: str, *args: Any) -> int:
    """Run a count query on a fresh connection."""
    conn = await asyncpg.connect(db_url)
    try:
        value: int = await conn.fetchval(sql, *args)
        return value
    finally:
        await conn.close()


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


async def stored_prices(conn: asyncpg.Connection, tokens: Iterable[str]) -> dict[str, Decimal]:
    """The stored latest price of each of `tokens`."""
    rows = await conn.fetch(
        "SELECT token_address, price_usd FROM token_prices WHERE token_address = ANY($1)",
        list(tokens),
    )
    return {r["token_address"]: r["price_usd"] for r in rows}
