"""`signal-worker migrate [--dry-run]`: apply pending schema files."""

from __future__ import annotations

import argparse

import structlog

from worker.db.migrations import default_schema_dir, load_migrations, migrate
from worker.db.pool import connect
from worker.settings import Settings

log = structlog.get_logger(__name__)


async def run(settings: Settings, args: argparse.Namespace) -> int:
    """Apply (or with --dry-run, list) the pending migrations; print what happened."""
    migrations = load_migrations(default_schema_dir())
    conn = await connect(settings.db, timeout_s=settings.startup_timeout_s)
    try:
        names = await migrate(conn, migrations, dry_run=args.dry_run)
    finally:
        await conn.close()
    verb = "would apply" if args.dry_run else "applied"
    for name in names:
        print(f"{verb} {name}")
    print(f"{verb} {len(names)} of {len(migrations)} migrations; schema is "
          f"{'not yet ' if args.dry_run and names else ''}up to date")
    log.info("migrations_done", applied=names, dry_run=args.dry_run)
    return 0
