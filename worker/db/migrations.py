"""Forward-only schema migrations: `schema/NNNN_name.sql`, each applied once, in a transaction.

Several containers may start at once: a session-level advisory lock serialises them, and
each file is applied and recorded (name, SHA-256 checksum) in one transaction, so each
file is applied exactly once. A recorded file whose checksum changed stops everything.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

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
LOCK = "SELECT pg_advisory_lock($1)"
UNLOCK = "SELECT pg_advisory_unlock($1)"
SELECT_APPLIED = "SELECT name, checksum FROM schema_migrations ORDER BY name"
INSERT_APPLIED = "INSERT INTO schema_migrations (name, checksum) VALUES ($1, $2)"


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema file: its name, SQL text and SHA-256 checksum."""

    name: str
    sql: str
    checksum: str


def default_schema_dir() -> Path:
    """The repository's `schema/` folder (also copied into the container image)."""
    return Path(__file__).resolve().parents[2] / "schema"


def load_migrations(schema_dir: Path) -> list[Migration]:
    """Every `NNNN_name.sql` file of `schema_dir`, in name order."""
    if not schema_dir.is_dir():
        raise MigrationError(f"schema folder {schema_dir} not found")
    migrations = []
    for path in sorted(schema_dir.glob("*.sql")):
        if not _NAME_RE.match(path.name):
            raise MigrationError(f"{path.name}: schema files must be named NNNN_lower_name.sql")
        data = path.read_bytes()
        migrations.append(
            Migration(path.name, data.decode("utf-8"), hashlib.sha256(data).hexdigest())
        )
    return migrations


async def migrate(
    conn: asyncpg.Connection, migrations: list[Migration], *, dry_run: bool = False
) -> list[str]:
    """Apply the pending migrations under the advisory lock; return the names (to be) applied."""
    await conn.execute(LOCK, MIGRATION_LOCK_ID)
    try:
        await conn.execute(CREATE_MIGRATIONS_TABLE)
        applied = {r["name"]: r["checksum"].strip() for r in await conn.fetch(SELECT_APPLIED)}
        for migration in migrations:
            recorded = applied.get(migration.name)
            if recorded is not None and recorded != migration.checksum:
                raise MigrationError(
                    f"{migration.name} was changed after it was applied (checksum "
                    f"{recorded[:12]}… recorded, {migration.checksum[:12]}… on disk); "
                    "schema files are forward-only: restore it and add a new file"
                )
        pending = [m for m in migrations if m.name not in applied]
        if dry_run:
            return [m.name for m in pending]
        for migration in pending:
            try:
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(INSERT_APPLIED, migration.name, migration.checksum)
            except asyncpg.PostgresError as exc:
                raise MigrationError(f"{migration.name} failed: {exc}") from exc
        return [m.name for m in pending]
    finally:
        await conn.execute(UNLOCK, MIGRATION_LOCK_ID)
