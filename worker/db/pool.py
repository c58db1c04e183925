"""Creates and closes the asyncpg pool, with bounded start-up retries and JSON codecs."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import cast
from urllib.parse import urlsplit

import asyncpg
import orjson

from worker.db.migrations import default_schema_dir, load_migrations, require_migrated
from worker.errors import ServiceUnavailable
from worker.retry import (
    SERVICE_ERRORS,
    StartupClock,
    describe,
    is_transient,
    startup_retry,
    unreachable_hint,
)
from worker.settings import DbSettings

Pool = asyncpg.Pool


def _dumps(value: object) -> str:
    return orjson.dumps(value).decode()


async def _init_connection(conn: asyncpg.Connection) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, encoder=_dumps, decoder=orjson.loads, schema="pg_catalog")


async def connect(
    db: DbSettings, *, timeout_s: float, progress: bool = False
) -> asyncpg.Connection:
    """One connection, retried for at most `timeout_s`; `ServiceUnavailable` after that.
    `progress`: a line per retry (a process starting; `worker.retry.startup_retry`)."""
    clock = StartupClock(timeout_s)
    try:
        async for attempt in startup_retry(timeout_s, service=_service(db), progress=progress):
            with attempt:
                conn = await asyncpg.connect(
                    db.url.get_secret_value(), timeout=clock.attempt_s(db.connect_timeout_s)
                )
                await _init_connection(conn)
                return conn
    except SERVICE_ERRORS as exc:
        raise _unavailable(db, exc, clock.waited_s()) from exc
    raise AssertionError("unreachable")  # pragma: no cover


async def create_pool(
    db: DbSettings, *, timeout_s: float, server_settings: dict[str, str] | None = None
) -> asyncpg.Pool:
    """The worker's pool, retried for at most `timeout_s` (a line per retry); then
    `ServiceUnavailable`. `server_settings`: settings of every connection."""
    clock = StartupClock(timeout_s)
    try:
        async for attempt in startup_retry(timeout_s, service=_service(db), progress=True):
            with attempt:
                return await asyncpg.create_pool(
                    db.url.get_secret_value(),
                    min_size=db.pool_min_size,
                    max_size=db.pool_max_size,
                    # not bounded by the deadline: the pool keeps this for its lifetime
                    timeout=db.connect_timeout_s,
                    command_timeout=db.command_timeout_s,
                    init=_init_connection,
                    server_settings=server_settings,
                )
    except SERVICE_ERRORS as exc:
        raise _unavailable(db, exc, clock.waited_s()) from exc
    raise AssertionError("unreachable")  # pragma: no cover


def _service(db: DbSettings) -> str:
    return f"PostgreSQL at {db.masked_url()}"


def _host(db: DbSettings) -> str:
    """The URL's host:port, as a person would look for it (the URL itself when unusual)."""
    try:
        parts = urlsplit(db.url.get_secret_value())
        host, port = parts.hostname, parts.port or 5432
    except ValueError:
        return db.masked_url()
    return f"{host}:{port}" if host else db.masked_url()


def _unavailable(db: DbSettings, exc: BaseException, waited_s: float) -> ServiceUnavailable:
    reason = describe(exc)
    if not is_transient(exc) and isinstance(exc, asyncpg.PostgresError):
        return ServiceUnavailable(f"PostgreSQL at {db.masked_url()} refused: {reason}")
    reason = unreachable_hint("PostgreSQL", "DATABASE_URL", [_host(db)], exc, waited_s)
    return ServiceUnavailable(
        f"cannot reach PostgreSQL at {db.masked_url()} (DATABASE_URL): {reason}"
    )


@contextlib.asynccontextmanager
async def connection(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A connection from the pool, typed as the `Connection` every repository takes."""
    async with pool.acquire() as proxy:
        # The pool's proxy forwards every Connection method; the stubs type it apart.
        yield cast(asyncpg.Connection, proxy)


async def connect_migrated(
    db: DbSettings, *, timeout_s: float, progress: bool = False
) -> asyncpg.Connection:
    """`connect`, then `MigrationsPendingError` (one line) unless every bundled migration has
    been applied: the commands that read or write the worker's tables start with this."""
    conn = await connect(db, timeout_s=timeout_s, progress=progress)
    try:
        await require_migrated(conn, load_migrations(default_schema_dir()))
    except BaseException:
        await conn.close()
        raise
    return conn
