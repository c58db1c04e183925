"""`signal-worker migrate [--dry-run] [--schema-dir DIR]`: apply pending schema files."""

from __future__ import annotations

import argparse
from pathlib import Path

import structlog

from worker.db.migrations import default_schema_dir, load_migrations, migrate
from worker.db.pool import connect
from worker.settings import Settings

log = structlog.get_logger(__name__)


async def run(settings: Settings, args: argparse.Namespace) -> int:
    """Apply (or with --dry-run, list) the pending migrations; print what happened."""
    dry_run = bool(getattr(args, "dry_run", False))
    schema_dir = getattr(args, "schema_dir", None)
    migrations = load_migrations(Path(schema_dir) if schema_dir else default_schema_dir())
    conn = await connect(settings.db, timeout_s=settings.startup_timeout_s, progress=True)
    try:
        names = await migrate(conn, migrations, dry_run=dry_run)
    finally:
        await conn.close()
    if dry_run:
        # The answer to a question: data, on stdout.
        for name in names:
            print(f"would apply {name}")
        state = "not yet up to date" if names else "up to date"
        print(f"{len(names)} of {len(migrations)} migrations pending; schema is {state}")
        return 0
    for name in names:
        log.info("migration_applied", name=name)
    log.info("schema_up_to_date", applied_now=len(names), migrations=len(migrations))
    return 0
