"""A newcomer's first hour, as the README tells it: the README's own publish example after
`seed-demo` trades, and `demo` shows a buy, a take-profit sale and stop-loss exits."""

from __future__ import annotations

import re
import shlex
import uuid
from pathlib import Path

import asyncpg
import pytest

from tests.helpers.cli import run_cli
from tests.helpers.kafka import Topics
from tests.helpers.services import Services
from tests.helpers.workers import WorkerProcess, wait_for_count, worker_env

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

README = Path(__file__).resolve().parents[2] / "README.md"
EXECUTIONS = "SELECT count(*) FROM signal_executions"


def readme_publish_example() -> list[str]:
    """The arguments of the README's single-signal `publish` example, continuation lines
    joined (the placeholder user id kept, to be filled in)."""
    text = README.read_text(encoding="utf-8").replace("\\\n", " ")
    [line] = [
        line
        for line in text.splitlines()
        if line.startswith(".venv/bin/signal-worker publish --user-id")
    ]
    words = shlex.split(line.replace("<user id printed above>", "USER_ID"))
    assert words[0] == ".venv/bin/signal-worker"
    return words[1:]


async def test_the_readme_publish_example_after_seed_demo_makes_a_trade(
    services: Services, db_url: str, topics: Topics, db_conn: asyncpg.Connection
) -> None:
    env = worker_env(services, db_url, topics)
    seeded = await run_cli(env, "seed-demo")
    assert seeded.code == 0, seeded.stderr
    match = re.search(r"^demo user ([0-9a-f-]{36}) ", seeded.stdout, re.MULTILINE)
    assert match, seeded.stdout
    user_id = match.group(1)
    worker = WorkerProcess(env).start()
    try:
        await worker.wait_started()
        args = [user_id if a == "USER_ID" else a for a in readme_publish_example()]
        published = await run_cli(env, *args)
        assert published.code == 0, published.stderr
        await wait_for_count(db_url, EXECUTIONS, 4)
    finally:
        code = worker.terminate()
    assert code == 0, worker.tail()
    rows = await db_conn.fetch(
        "SELECT a.name, e.status, e.error FROM signal_executions e "
        "JOIN agents a ON a.id = e.agent_id WHERE a.user_id = $1",
        uuid.UUID(user_id),
    )
    statuses = {r["name"].split(" (")[0]: r["status"] for r in rows}
    # The picky agent wants market data the example does not carry: it skips, as it says.
    assert statuses == {
        "Steady": "success",
        "Momentum": "success",
        "Picky": "skipped",
        "Small wallet": "success",
    }, [(r["name"], r["status"], r["error"]) for r in rows]


@pytest.mark.parametrize("worker_running", [True, False], ids=["with make run", "on its own"])
async def test_demo_shows_a_buy_a_take_profit_and_stop_loss_exits(
    services: Services, db_url: str, topics: Topics, worker_running: bool
) -> None:
    env = worker_env(services, db_url, topics)
    worker = WorkerProcess(env).start() if worker_running else None
    try:
        if worker is not None:
            await worker.wait_started()
        demo = await run_cli(env, "demo", timeout_s=150)
    finally:
        code = worker.terminate() if worker is not None else 0
    assert demo.code == 0, demo.stderr[-20:]
    assert code == 0
    lines = demo.stdout.splitlines()
    assert lines[0].split() == [
        "agent", "decision", "bought", "(SOL)", "take", "profit", "(SOL)", "exit", "P/L",
        "(SOL)", "SOL", "now",
    ]  # fmt: skip
    rows = {line.split("  ")[0].strip(): line for line in lines[1:5]}
    assert set(rows) == {"Steady", "Momentum", "Picky", "Small wallet"}
    for name, row in rows.items():
        assert " success " in row, row
        assert "stop loss" in row and " +0." in row, row  # every exit in profit
        if name == "Momentum":
            assert " in 1 " in row, row  # its first take-profit level sold a quarter
    assert lines[-1] == "check: all ledger invariants hold"
    started = any('"demo_starts_a_worker"' in line for line in demo.stderr)
    assert started is not worker_running
