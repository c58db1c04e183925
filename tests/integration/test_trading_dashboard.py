"""The trading dashboard's panels, run against a seeded database as its read-only login.

Each panel's SQL (deploy/grafana/dashboards/trading.json) has Grafana's macros expanded as
Grafana's PostgreSQL datasource expands them, and runs as a role made by
deploy/postgres/grafana-reader.sql: every panel returns rows with the columns its format
needs, and the role cannot write.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.helpers.books import TOKEN_A, make_account
from tests.helpers.services import ROOT
from tests.integration.test_report_replay import _trade
from worker.db.snapshots import hour_of, snapshot_all
from worker.db.store import PgStore
from worker.domain.models import Signal
from worker.handlers.signals import handle_signals
from worker.settings import Settings

pytestmark = pytest.mark.integration

DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "trading.json"
READER_SQL = ROOT / "deploy" / "postgres" / "grafana-reader.sql"


def panels() -> list[dict[str, Any]]:
    return list(json.loads(DASHBOARD.read_text(encoding="utf-8"))["panels"])


def expand(sql: str, start: datetime, end: datetime) -> str:
    """Grafana's macros, as its PostgreSQL datasource expands them."""
    sql = re.sub(
        r"\$__timeFilter\(([^)]+)\)",
        lambda m: f"{m.group(1)} BETWEEN '{start.isoformat()}' AND '{end.isoformat()}'",
        sql,
    )
    return re.sub(
        r"\$__timeGroupAlias\(([^,]+),\s*'1h'\)",
        lambda m: f'to_timestamp(floor(extract(epoch FROM {m.group(1)}) / 3600) * 3600) AS "time"',
        sql,
    )


def reader_statements(role: str, password: str) -> list[str]:
    """grafana-reader.sql with its psql variables filled in, one statement each."""
    text = "\n".join(
        line for line in READER_SQL.read_text(encoding="utf-8").splitlines()
        if not line.startswith("--")
    )  # fmt: skip
    text = text.replace(':"reader"', f'"{role}"').replace(":'password'", f"'{password}'")
    return [s.strip() for s in text.split(";") if s.strip()]


@pytest.fixture
async def reader(db_conn: asyncpg.Connection) -> AsyncIterator[str]:
    """A read-only login made by grafana-reader.sql, dropped after the test."""
    role = f"grafana_reader_{uuid.uuid4().hex[:8]}"
    for statement in reader_statements(role, "test-password"):
        await db_conn.execute(statement)
    yield role
    await db_conn.execute(f'DROP OWNED BY "{role}"')
    await db_conn.execute(f'DROP ROLE "{role}"')


def test_every_panel_reads_the_database_with_its_own_sql() -> None:
    found = panels()
    assert len(found) == 7
    provisioning = (ROOT / "deploy" / "grafana" / "provisioning" / "datasources"
                    / "postgres.yml").read_text(encoding="utf-8")  # fmt: skip
    # The panels use the `database` variable, which picks a datasource of this type: the
    # provisioned one under `make up` (tests/unit/test_dashboards.py checks the rest).
    assert "type: grafana-postgresql-datasource" in provisioning
    assert "password: ${GRAFANA_DB_PASSWORD}" in provisioning
    for panel in found:
        assert panel["datasource"] == {
            "type": "grafana-postgresql-datasource",
            "uid": "${database}",
        }, panel["title"]
        [target] = panel["targets"]
        assert target["rawQuery"] and target["rawSql"].lstrip().startswith("SELECT")


async def test_every_panel_returns_rows_for_the_reader_which_cannot_write(
    db_url: str, db_conn: asyncpg.Connection, reader: str
) -> None:
    await _trade(db_conn)
    # And an agent that does not buy (a minimum score above the signal's).
    picky = await make_account(db_conn, [{"signals": {"minScore": 5}}])
    signal = Signal(user_id=picky.user_id, token_address=TOKEN_A, signal_type="Velocity",
                    signal_strength=4, idempotency_key="picky", created_at=datetime.now(UTC),
                    price_usd=Decimal(1))  # fmt: skip
    async with db_conn.transaction():
        await handle_signals(PgStore(db_conn), [signal], trading=Settings().trading)  # fmt: skip
    await snapshot_all(db_conn, hour_of(datetime.now(UTC)))
    conn = await asyncpg.connect(db_url, user=reader, password="test-password")
    try:
        start, end = datetime.now(UTC) - timedelta(days=7), datetime.now(UTC) + timedelta(hours=1)
        for panel in panels():
            [target] = panel["targets"]
            rows = await conn.fetch(expand(target["rawSql"], start, end))
            assert rows, panel["title"]
            if target["format"] == "time_series":
                assert list(rows[0].keys()) == ["time", "metric", "value"], panel["title"]
        with pytest.raises(asyncpg.PostgresError, match=r"read-only|permission denied"):
            await conn.execute("DELETE FROM signal_executions")
    finally:
        await conn.close()


def test_the_dashboard_is_mounted_with_the_operations_one() -> None:
    compose = (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
    assert "./deploy/grafana/dashboards:/var/lib/grafana/dashboards:ro" in compose
    assert "./deploy/postgres/initdb:/docker-entrypoint-initdb.d:ro" in compose
    script = ROOT / "deploy" / "postgres" / "initdb" / "10-grafana-reader.sh"
    assert script.stat().st_mode & 0o111, "the init script must be executable"
    assert Path("/etc/signal-worker/grafana-reader.sql").name in script.read_text(encoding="utf-8")
