"""Forward-only schema migrations: `schema/NNNN_name.sql`, each applied once, in a transaction.

The files ship inside the package (`worker/schema/`, package data; the repository's top-level
`schema` is a link to it), so an installed wheel migrates without the source tree.

Several containers may start at once: a session-level advisory lock serialises them, and
each file is applied and recorded (name, SHA-256 checksum) in one transaction, so each
file is applied exactly once. A recorded file whose checksum changed stops everything.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable

import asyncpg

from worker.errors import MigrationError

# Any fixed 64-bit number, the same for every worker: "signal-worker migrations".
MIGRATION_LOCK_ID = 0x5157_4D49_4752_4154

_NAME_RE = re.compile(r"^\d{4}_[a-z0-9_]+\.sql$")

CREATE_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    name        text        PRIMARY KEY,
    checksum    char(64)    NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE schema_migrations IS
    'signal-worker: schema/*.sql files applied by `signal-worker migrate`, with their SHA-256';
"""
HAS_MIGRATIONS_TABLE = "SELECT to_regclass('schema_migrations') IS NOT NULL"
LOCK = "SELECT pg_advisory_lock($1)"
UNLOCK = "SELECT pg_advisory_unlock($1)"
SELECT_APPLIED = "SELECT name, checksum FROM schema_migrations ORDER BY name"
INSERT_APPLIED = "INSERT INTO schema_migrations (name, checksum) VALUES ($1, $2)"


class SchemaFileError(MigrationError):
    """The schema folder is missing or holds a file that is not named `NNNN_lower_name.sql`."""

    def __init__(self, path: Traversable, problem: str) -> None:
        super().__init__(f"{path}: {problem}")


class MigrationChangedError(MigrationError):
    """An applied schema file no longer has the checksum recorded when it was applied."""

    def __init__(self, name: str, recorded: str, on_disk: str) -> None:
        super().__init__(
            f"{name} was changed after it was applied (checksum {recorded[:12]}… recorded, "
            f"{on_disk[:12]}… on disk); schema files are forward-only: restore it and add "
            "a new file"
        )
        self.name = name


class MigrationFailedError(MigrationError):
    """A schema file failed; its transaction was rolled back."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name} failed, nothing of it was applied: {reason}")
        self.name = name


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema file: its name, SQL text and SHA-256 checksum."""

    name: str
    sql: str
    checksum: str


def default_schema_dir() -> Traversable:
    """The schema files shipped in the package (`worker/schema/`), read with importlib.resources."""
    return files("worker") / "schema"


def load_migrations(schema_dir: Traversable) -> list[Migration]:
    """Every `NNNN_name.sql` file of `schema_dir` (a folder or package resource), in name order."""
    if not schema_dir.is_dir():
        raise SchemaFileError(schema_dir, "schema folder not found")
    migrations = []
    entries = (
        e
        for e in schema_dir.iterdir()
        if e.name.endswith(".sql") and not e.name.startswith(".") and e.is_file()
    )
    for entry in sorted(entries, key=lambda e: e.name):
        if not _NAME_RE.match(entry.name):
            raise SchemaFileError(entry, "schema files must be named NNNN_lower_name.sql")
        data = entry.read_bytes()
        migrations.append(
            Migration(entry.name, data.decode("utf-8"), hashlib.sha256(data).hexdigest())
        )
    return migrations


async def migrate(
    conn: asyncpg.Connection, migrations: list[Migration], *, dry_run: bool = False
) -> list[str]:
    """Apply the pending migrations under the advisory lock; return the names (to be) applied.

    With `dry_run` nothing is written, not even the `schema_migrations` table.
    """
    await conn.execute(LOCK, MIGRATION_LOCK_ID)
    try:
        pending = await _pending(conn, migrations, dry_run=dry_run)
        if not dry_run:
            for migration in pending:
                await _apply(conn, migration)
        return [m.name for m in pending]
    finally:
        # A lost connection has already released the lock; do not hide the original error.
        if not conn.is_closed():
            await conn.execute(UNLOCK, MIGRATION_LOCK_ID)


async def _pending(
    conn: asyncpg.Connection, migrations: list[Migration], *, dry_run: bool
) -> list[Migration]:
    """The migrations not yet applied; `MigrationError` if an applied one was edited."""
    if dry_run:
        has_table = bool(await conn.fetchval(HAS_MIGRATIONS_TABLE))
    else:
        await conn.execute(CREATE_MIGRATIONS_TABLE)
        has_table = True
    rows = await conn.fetch(SELECT_APPLIED) if has_table else []
    applied = {r["name"]: r["checksum"].strip() for r in rows}
    for migration in migrations:
        recorded = applied.get(migration.name)
        if recorded is not None and recorded != migration.checksum:
            raise MigrationChangedError(migration.name, recorded, migration.checksum)
    return [m for m in migrations if m.name not in applied]


async def _apply(conn: asyncpg.Connection, migration: Migration) -> None:
    """Run one file and record it, both in one transaction."""
    try:
        async with conn.transaction():
            await conn.execute(migration.sql)
            await conn.execute(INSERT_APPLIED, migration.name, migration.checksum)
    except asyncpg.PostgresError as exc:
        raise MigrationFailedError(migration.name, str(exc)) from exc


class MigrationsPendingError(MigrationError):
    """The database lacks migrations this version needs; `signal-worker migrate` applies them."""


async def require_migrated(conn: asyncpg.Connection, migrations: list[Migration]) -> None:
    """`MigrationsPendingError` in one line naming what is pending when the database has not
    had every migration applied (none at all, or only some); `MigrationChangedError` when an
    applied file was edited. Reads only."""
    pending = await _pending(conn, migrations, dry_run=True)
    if not pending:
        return
    names = ", ".join(m.name for m in pending[:4]) + (", ..." if len(pending) > 4 else "")
    state = "is not migrated" if len(pending) == len(migrations) else "is not fully migrated"
    raise MigrationsPendingError(
        f"the database {state}: {len(pending)} of {len(migrations)} migrations pending "
        f"({names}); run `signal-worker migrate` first"
    )
