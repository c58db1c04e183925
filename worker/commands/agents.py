"""`signal-worker agents lint`: every agent's stored trading_config, as the worker reads it.

For each agent whose config has a problem: `invalid` (the reason, such as a config over
AGENT_CONFIG_MAX_BYTES, which is not even read: it buys nothing, its
executions fail with that reason, and its open positions keep the exit rules they were
opened with), or keys the worker ignores (`unknown`), or legacy keys of the source system
that it accepts silently (`legacy`, listed for completeness). Exit 1 when any config is
invalid, else 0: ignored keys are warnings. Names and keys are printed with their control
characters escaped (`worker.commands.text`).
"""

from __future__ import annotations

import argparse

from worker.commands.text import printable
from worker.db.pool import connect_migrated
from worker.db.store import PgStore
from worker.domain.config_reading import read_config
from worker.settings import Settings


async def run(settings: Settings, args: argparse.Namespace) -> int:
    """Print each agent's config problems and a summary line; 1 if any config is invalid."""
    del args
    conn = await connect_migrated(settings.db, timeout_s=settings.startup_timeout_s)
    agents = invalid = unknown = 0
    try:
        async with conn.transaction(readonly=True):
            async for stored in PgStore(conn).stored_configs(settings.agent_config_max_bytes):
                agents += 1
                reading = read_config(stored.text)
                who = f"agent {stored.agent_id} ({stored.name}, user {stored.user_id})"
                if reading.error is not None:
                    invalid += 1
                    print(printable(f"{who}: invalid: {reading.error}"))
                if reading.unknown_keys:
                    unknown += 1
                    keys = ", ".join(reading.unknown_keys)
                    print(printable(f"{who}: unknown keys (ignored): {keys}"))
                if reading.legacy_keys:
                    keys = ", ".join(reading.legacy_keys)
                    print(printable(f"{who}: legacy keys (ignored): {keys}"))
    finally:
        await conn.close()
    print(
        f"agents lint: {agents} agent(s); {invalid} with an invalid config, "
        f"{unknown} with keys the worker ignores"
    )
    return 1 if invalid else 0
