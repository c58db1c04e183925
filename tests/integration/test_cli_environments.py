"""Every command in a bad environment: a database never migrated, a broker nobody answers
at, a stdout closed early. One plain line and an exit code each, never a traceback."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import uuid
from pathlib import Path

import pytest

from tests.helpers.books import TOKEN_A
from tests.helpers.cli import assert_log_lines_then_one_error, run_cli, start_cli
from tests.helpers.kafka import Topics
from tests.helpers.services import Services
from tests.helpers.workers import env_for, make_settings, worker_env
from worker.domain.models import SOL_MINT

pytestmark = pytest.mark.integration
SCHEMA = Path(__file__).resolve().parents[2] / "schema"

USER = str(uuid.uuid4())
DATABASE_COMMANDS = [
    ("run",),
    ("check",),
    ("snapshot",),
    ("seed-demo",),
    ("agents", "lint"),
    ("agents", "list"),
    ("agents", "fund", USER, "1"),
    ("users", "create", "--email", "a@example.com"),
    ("offsets", "show"),
    ("dlq", "list"),
    ("notify", "--url", "http://127.0.0.1:9/hook"),
    ("report",),
    ("replay",),
]
KAFKA_COMMANDS = [
    ("run",),
    (
        "publish",
        "--user-id",
        USER,
        "--token-address",
        TOKEN_A,
        "--signal-type",
        "manual",
        "--signal-strength",
        "3",
    ),
    ("publish-price", "--token-address", SOL_MINT, "--price-usd", "150"),
    ("users", "create", "--email", "a@example.com", "--no-wait"),
    ("offsets", "show"),
    ("dlq", "list"),
    ("notify", "--url", "http://127.0.0.1:9/hook"),
]


MIGRATIONS = len(sorted(SCHEMA.glob("[0-9]*.sql")))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens there once this closes


@pytest.mark.parametrize("command", DATABASE_COMMANDS, ids=" ".join)
async def test_on_a_database_never_migrated_every_command_says_to_migrate(
    services: Services, topics: Topics, empty_db: str, command: tuple[str, ...]
) -> None:
    env = worker_env(services, empty_db, topics, startup_timeout_s=5)
    run = await run_cli(env, *command, timeout_s=60)
    assert run.code == 1, run
    last = assert_log_lines_then_one_error(run.stderr, command[0])
    assert last.endswith(
        f"the database is not migrated: {MIGRATIONS} of {MIGRATIONS} migrations pending "
        "(0001_core.sql, "
        "0002_position_ledger_links.sql, 0003_drop_redundant_indexes.sql, "
        "0004_exit_rules_and_signal_provenance.sql, ...); run `signal-worker migrate` first"
    ), last


async def test_a_partly_migrated_database_names_what_is_pending(
    services: Services, topics: Topics, empty_db: str, tmp_path: Path
) -> None:
    env = worker_env(services, empty_db, topics)
    schema = SCHEMA
    first = tmp_path / "schema"
    first.mkdir()
    (first / "0001_core.sql").write_text((schema / "0001_core.sql").read_text())
    applied = await run_cli(env, "migrate", "--schema-dir", str(first))
    assert applied.code == 0, applied.stderr
    run = await run_cli(env, "check")
    assert run.code == 1
    assert run.stderr[-1].endswith(
        f"the database is not fully migrated: {MIGRATIONS - 1} of {MIGRATIONS} migrations pending "
        "(0002_position_ledger_links.sql, 0003_drop_redundant_indexes.sql, "
        "0004_exit_rules_and_signal_provenance.sql, 0005_price_history.sql, ...); run "
        "`signal-worker migrate` first"
    ), run.stderr[-1]
    dry = await run_cli(env, "migrate", "--dry-run")
    assert dry.code == 0
    assert dry.stdout.splitlines()[-1] == (
        f"{MIGRATIONS - 1} of {MIGRATIONS} migrations pending; schema is not yet up to date"
    )


@pytest.mark.parametrize("command", KAFKA_COMMANDS, ids=" ".join)
async def test_with_no_broker_answering_every_command_says_so_in_one_line(
    services: Services, topics: Topics, db_url: str, command: tuple[str, ...]
) -> None:
    broker = f"127.0.0.1:{_closed_port()}"
    settings = make_settings(
        services, db_url, topics, kafka_bootstrap_servers=broker, startup_timeout_s=2
    )
    run = await run_cli(env_for(settings), *command, timeout_s=60)
    assert run.code == 1, run
    last = assert_log_lines_then_one_error(run.stderr, command[0])
    assert f"cannot use Kafka at {broker} (KAFKA_BOOTSTRAP_SERVERS, PLAINTEXT)" in last, last


CLOSED_STDOUT_COMMANDS = [
    ("check",),
    ("agents", "lint"),
    ("agents", "list"),
    ("offsets", "show"),
    ("dlq", "list"),
    ("snapshot",),
    ("seed-demo",),
    ("migrate", "--dry-run"),
]


@pytest.mark.parametrize("command", CLOSED_STDOUT_COMMANDS, ids=" ".join)
async def test_a_stdout_closed_early_ends_the_command_quietly(
    services: Services, topics: Topics, db_url: str, command: tuple[str, ...]
) -> None:
    """As `signal-worker offsets show | head -0` would: exit 141 (as a shell tool killed by
    SIGPIPE), and nothing on stderr but log lines. (`--help` and `--version` print through
    argparse, which ignores a failed write: they exit 0, as quietly.)"""
    env = worker_env(services, db_url, topics)
    read_end, write_end = os.pipe()
    os.close(read_end)  # a stdout nobody will ever read
    try:
        proc = await start_cli(env, *command, stdout=write_end)
    finally:
        os.close(write_end)
    assert proc.stderr is not None
    err = await asyncio.wait_for(proc.stderr.read(), timeout=60)
    code = await proc.wait()
    lines = [line for line in err.decode().splitlines() if line.strip()]
    assert code == 141, (code, lines)
    assert not any("Traceback" in line or "BrokenPipe" in line for line in lines), lines
    for line in lines:
        assert isinstance(json.loads(line), dict), line


@pytest.mark.parametrize("flag", ["--version", "--help"])
async def test_help_and_version_with_a_closed_stdout_exit_quietly(flag: str) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = await start_cli(None, flag, stdout=write_end)
    finally:
        os.close(write_end)
    assert proc.stderr is not None
    err = await asyncio.wait_for(proc.stderr.read(), timeout=60)
    assert (await proc.wait(), err) == (0, b"")
