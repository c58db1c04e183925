"""`migrate`: each schema file once, in name order, in its own transaction, under a lock.

Every test works on a fresh, EMPTY database of its own (no template), dropped afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from tests.helpers.cli import CliRun, finish_cli, run_cli, start_cli
from tests.helpers.db import connected
from worker.db.migrations import (
    MIGRATION_LOCK_ID,
    Migration,
    default_schema_dir,
    load_migrations,
    migrate,
)
from worker.errors import MigrationError

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
WOULD_APPLY_LINE = re.compile(r"^would apply (\d{4}_[a-z0-9_]+\.sql)$", re.MULTILINE)
CLI_TIMEOUT_S = 20.0

COUNT_PUBLIC_TABLES = "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
SELECT_RECORDED = "SELECT name, checksum, applied_at FROM schema_migrations ORDER BY name"
WAITING_ADVISORY_LOCKS = """
SELECT count(*) FROM pg_locks
WHERE locktype = 'advisory' AND NOT granted
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


@pytest.fixture
async def conn(empty_db: str) -> AsyncIterator[asyncpg.Connection]:
    async with connected(empty_db) as connection:
        yield connection


@pytest.fixture
def schema_copy(tmp_path: Path) -> Path:
    """A copy of the real schema folder (package data) that a test may edit."""
    target = tmp_path / "schema"
    target.mkdir()
    for entry in default_schema_dir().iterdir():
        (target / entry.name).write_bytes(entry.read_bytes())
    return target


def real_names() -> list[str]:
    return [m.name for m in load_migrations(default_schema_dir())]


def write(folder: Path, name: str, sql: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(sql, encoding="utf-8")


async def table_exists(conn: asyncpg.Connection, name: str) -> bool:
    return bool(await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", name))


def cli_env(db_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_"))}
    env.update(DATABASE_URL=db_url, LOG_FORMAT="json", LOG_LEVEL="INFO")
    return env


def applied_names(err: str) -> list[str]:
    """The files a `migrate` run applied, from its `migration_applied` log lines (JSON)."""
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    return [e["name"] for e in events if e["event"] == "migration_applied"]


def up_to_date(err: str) -> dict[str, int]:
    """The counts of its closing `schema_up_to_date` line."""
    [event] = [
        e
        for e in (json.loads(line) for line in err.splitlines() if line.startswith("{"))
        if e["event"] == "schema_up_to_date"
    ]
    return {"applied_now": event["applied_now"], "migrations": event["migrations"]}


def plain(run: CliRun) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of a `migrate` run."""
    return run.code, run.stdout, "\n".join(run.stderr)


async def migrate_cli(db_url: str, *args: str) -> tuple[int, str, str]:
    """`signal-worker migrate ARGS` against `db_url`, to its end."""
    return plain(await run_cli(cli_env(db_url), "migrate", *args, timeout_s=CLI_TIMEOUT_S))


# ------------------------------------------------------------------------ the function


async def test_the_real_schema_has_files_in_order() -> None:
    migrations = load_migrations(default_schema_dir())
    names = [m.name for m in migrations]
    assert names, "schema/ holds no migrations"
    assert names[0] == "0001_core.sql"
    assert names == sorted(names)
    assert all(isinstance(m, Migration) and len(m.checksum) == 64 for m in migrations)


async def test_migrate_applies_every_file_once_then_is_a_no_op(conn: asyncpg.Connection) -> None:
    migrations = load_migrations(default_schema_dir())

    first = await migrate(conn, migrations)
    recorded = [tuple(r) for r in await conn.fetch(SELECT_RECORDED)]
    tables = await conn.fetchval(COUNT_PUBLIC_TABLES)
    second = await migrate(conn, migrations)

    assert first == real_names()
    assert [(name, checksum.strip()) for name, checksum, _ in recorded] == [
        (m.name, m.checksum) for m in migrations
    ]
    assert second == []
    assert [tuple(r) for r in await conn.fetch(SELECT_RECORDED)] == recorded
    assert await conn.fetchval(COUNT_PUBLIC_TABLES) == tables


async def test_migrate_applies_files_in_name_order(
    conn: asyncpg.Connection, tmp_path: Path
) -> None:
    # Written last-first; each file needs the one before it.
    write(tmp_path, "0010_c.sql", "CREATE TABLE c (id int REFERENCES b (id));")
    write(tmp_path, "0002_b.sql", "CREATE TABLE b (id int PRIMARY KEY REFERENCES a (id));")
    write(tmp_path, "0001_a.sql", "CREATE TABLE a (id int PRIMARY KEY);")

    applied = await migrate(conn, load_migrations(tmp_path))

    assert applied == ["0001_a.sql", "0002_b.sql", "0010_c.sql"]
    assert await table_exists(conn, "c")


async def test_migrate_only_applies_files_added_since(
    conn: asyncpg.Connection, tmp_path: Path
) -> None:
    write(tmp_path, "0001_a.sql", "CREATE TABLE a (id int);")
    await migrate(conn, load_migrations(tmp_path))
    write(tmp_path, "0002_b.sql", "CREATE TABLE b (id int);")

    applied = await migrate(conn, load_migrations(tmp_path))

    assert applied == ["0002_b.sql"]
    assert await table_exists(conn, "b")


async def test_a_failing_file_is_rolled_back_and_named(
    conn: asyncpg.Connection, tmp_path: Path
) -> None:
    write(tmp_path, "0001_a.sql", "CREATE TABLE a (id int);")
    write(tmp_path, "0002_b.sql", "CREATE TABLE b (id int);\nSELECT 1 / 0;")
    write(tmp_path, "0003_c.sql", "CREATE TABLE c (id int);")

    with pytest.raises(MigrationError, match=r"0002_b\.sql failed.*division by zero"):
        await migrate(conn, load_migrations(tmp_path))

    assert await table_exists(conn, "a")
    assert not await table_exists(conn, "b")  # its transaction was rolled back
    assert not await table_exists(conn, "c")  # nothing after a failure
    assert [r["name"] for r in await conn.fetch(SELECT_RECORDED)] == ["0001_a.sql"]
    # A file that never applied may be fixed; the next run picks up from there.
    write(tmp_path, "0002_b.sql", "CREATE TABLE b (id int);")
    assert await migrate(conn, load_migrations(tmp_path)) == ["0002_b.sql", "0003_c.sql"]


async def test_an_edited_applied_file_stops_migrate_naming_it(
    conn: asyncpg.Connection, schema_copy: Path
) -> None:
    await migrate(conn, load_migrations(schema_copy))
    with (schema_copy / "0001_core.sql").open("a", encoding="utf-8") as f:
        f.write("\n-- an innocent-looking edit\n")
    write(schema_copy, "9999_later.sql", "CREATE TABLE later (id int);")

    with pytest.raises(MigrationError, match=r"0001_core\.sql was changed after it was applied"):
        await migrate(conn, load_migrations(schema_copy))
    with pytest.raises(MigrationError, match=r"0001_core\.sql"):
        await migrate(conn, load_migrations(schema_copy), dry_run=True)

    assert not await table_exists(conn, "later")


async def test_a_badly_named_file_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "0001_a.sql", "SELECT 1;")
    write(tmp_path, "2_Later.sql", "SELECT 1;")

    with pytest.raises(MigrationError, match=r"2_Later\.sql.*NNNN_lower_name\.sql"):
        load_migrations(tmp_path)


async def test_a_missing_schema_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MigrationError, match="not found"):
        load_migrations(tmp_path / "nowhere")


async def test_dry_run_lists_pending_files_and_writes_nothing(
    conn: asyncpg.Connection, schema_copy: Path
) -> None:
    pending = await migrate(conn, load_migrations(schema_copy), dry_run=True)

    assert pending == real_names()
    assert await conn.fetchval(COUNT_PUBLIC_TABLES) == 0  # not even schema_migrations

    await migrate(conn, load_migrations(schema_copy))
    write(schema_copy, "9999_later.sql", "CREATE TABLE later (id int);")
    assert await migrate(conn, load_migrations(schema_copy), dry_run=True) == ["9999_later.sql"]
    assert not await table_exists(conn, "later")


async def test_the_lock_is_released_after_success_and_failure(
    conn: asyncpg.Connection, empty_db: str, tmp_path: Path
) -> None:
    async with connected(empty_db) as other:
        write(tmp_path, "0001_a.sql", "CREATE TABLE a (id int);")
        await migrate(conn, load_migrations(tmp_path))
        assert await other.fetchval("SELECT pg_try_advisory_lock($1)", MIGRATION_LOCK_ID)
        await other.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)

        write(tmp_path, "0002_bad.sql", "SELECT 1 / 0;")
        with pytest.raises(MigrationError):
            await migrate(conn, load_migrations(tmp_path))
        assert await other.fetchval("SELECT pg_try_advisory_lock($1)", MIGRATION_LOCK_ID)


# ----------------------------------------------------------------------------- the CLI


async def test_cli_migrate_twice_applies_then_does_nothing(
    empty_db: str, conn: asyncpg.Connection
) -> None:
    code1, out1, err1 = await migrate_cli(empty_db)
    code2, out2, err2 = await migrate_cli(empty_db)

    assert (code1, code2) == (0, 0), err1 + err2
    assert applied_names(err1) == real_names()
    assert applied_names(err2) == []
    assert up_to_date(err2) == {"applied_now": 0, "migrations": len(real_names())}
    assert out1 == out2 == ""  # news goes to the log, once
    assert [r["name"] for r in await conn.fetch(SELECT_RECORDED)] == real_names()


async def test_three_processes_at_once_apply_each_file_exactly_once(
    empty_db: str, conn: asyncpg.Connection
) -> None:
    # Hold the lock until all three wait for it, so they really do run at the same time.
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
    procs = [await start_cli(cli_env(empty_db), "migrate") for _ in range(3)]
    try:
        try:
            async with asyncio.timeout(CLI_TIMEOUT_S):
                while await conn.fetchval(WAITING_ADVISORY_LOCKS) < 3:
                    assert all(p.returncode is None for p in procs), "a process ended early"
                    await asyncio.sleep(0.05)
        except TimeoutError:
            pytest.fail("the three processes never waited for the lock")
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
        results = [
            plain(run)
            for run in await asyncio.gather(*(finish_cli(p, CLI_TIMEOUT_S) for p in procs))
        ]
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    assert [code for code, _, _ in results] == [0, 0, 0], [err for _, _, err in results]
    applied = [name for _, _, err in results for name in applied_names(err)]
    assert sorted(applied) == real_names()  # every file by exactly one process
    assert [r["name"] for r in await conn.fetch(SELECT_RECORDED)] == real_names()


async def test_cli_refuses_an_edited_applied_file(
    empty_db: str, conn: asyncpg.Connection, schema_copy: Path
) -> None:
    await migrate(conn, load_migrations(schema_copy))
    core = schema_copy / "0001_core.sql"
    core.write_text(core.read_text(encoding="utf-8").replace("varchar(44)", "varchar(45)", 1))

    code, _, err = await migrate_cli(empty_db, "--schema-dir", str(schema_copy))

    assert code == 1
    assert "0001_core.sql was changed after it was applied" in err
    assert err.startswith("signal-worker migrate: ")
    assert "Traceback" not in err
    assert applied_names(err) == []


async def test_cli_dry_run_lists_pending_files_without_applying(
    empty_db: str, conn: asyncpg.Connection
) -> None:
    code, out, err = await migrate_cli(empty_db, "--dry-run")

    assert code == 0, err
    assert WOULD_APPLY_LINE.findall(out) == real_names()
    assert "schema is not yet up to date" in out
    assert await conn.fetchval(COUNT_PUBLIC_TABLES) == 0


async def test_cli_reports_a_failing_file_and_exits_non_zero(
    empty_db: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    write(tmp_path, "0001_bad.sql", "CREATE TABLE a (id int);\nCREATE TABLE a (id int);")

    code, _, err = await migrate_cli(empty_db, "--schema-dir", str(tmp_path))

    assert code == 1
    assert "0001_bad.sql failed" in err
    assert "Traceback" not in err
    assert not await table_exists(conn, "a")
