"""`signal-worker users | agents | positions` against the real broker and database: what is
published to COMMANDS_TOPIC (keyed by the user, decoded as the worker decodes it), and the
wait for the result row, with the test writing the `command_results` row in the worker's
place (the worker's side has tests of its own)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest

from tests.builders import add_agent, add_balance, add_user, add_wallet
from tests.helpers.books import TOKEN_A
from tests.helpers.cli import finish_cli, run_cli, start_cli
from tests.helpers.db import connected
from tests.helpers.kafka import Topics, create_topics, delete_topics, read_all, read_topic
from tests.helpers.services import Services
from tests.helpers.workers import worker_env
from worker.domain.config import resolve_config
from worker.domain.exact_json import loads_exact
from worker.domain.models import SOL_MINT
from worker.messages import (
    ClosePositionsV1,
    CreateAgentV1,
    CreateUserV1,
    DepositV1,
    PatchConfigV1,
    PauseV1,
    RenameAgentV1,
    WithdrawV1,
    decode_command,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def commands_topic(services: Services, topics: Topics) -> AsyncIterator[str]:
    """COMMANDS_TOPIC's default for this test's topics, co-partitioned with its signals."""
    name = f"{topics.signals}.commands"
    await create_topics(services.kafka_bootstrap, [name], 3)
    yield name
    await delete_topics(services.kafka_bootstrap, [name])


async def _agent(
    db_url: str, *, sol: Decimal | None = None, config: object = None
) -> tuple[uuid.UUID, uuid.UUID]:
    async with connected(db_url) as conn:
        user_id = await add_user(conn)
        agent_id = await add_agent(conn, user_id, config=config)
        if sol is not None:
            wallet = await add_wallet(conn, agent_id, "simulation")
            await add_balance(conn, agent_id, wallet, SOL_MINT, sol)
    return user_id, agent_id


async def _insert_result(
    db_url: str, user_id: uuid.UUID, key: str, command: str, status: str, *,
    reason: str | None = None, changes: object = None, agent_id: uuid.UUID | None = None,
    payload: str = "{}",
) -> None:  # fmt: skip
    """The row the worker writes when it applies or refuses the command (`payload`: the
    command as the worker records it, `CommandV1.payload_json`)."""
    async with connected(db_url) as conn:
        await conn.execute(
            """
            INSERT INTO command_results (user_id, idempotency_key, command, status, reason,
                                         agent_id, payload, changes, event_at, source_record)
            VALUES ($1, $2, $3, $4, $5, $6, $8::jsonb, $7::jsonb, now(), 'test:0:0')
            """,
            user_id, key, command, status, reason, agent_id,
            None if changes is None else json.dumps(changes), payload,
        )  # fmt: skip


async def test_each_command_is_published_keyed_by_its_user_as_the_worker_reads_it(
    services: Services, topics: Topics, db_url: str, commands_topic: str, tmp_path: Path
) -> None:
    user_id, agent_id = await _agent(db_url)
    env = worker_env(services, db_url, topics)
    agent = str(agent_id)
    config = tmp_path / "config.json"
    config.write_text('{"stopLoss": {"defaultPercentage": -20.125}}')
    runs = [
        ("users", "create", "--email", "new@example.com"),
        ("agents", "create", "--user", str(user_id), "--name", "Second", "--config", str(config),
         "--sol", "5"),
        ("agents", "config", agent, "--patch", '{"dca": {"enabled": true}}'),
        ("agents", "pause", agent, "--mode", "live"),
        ("agents", "fund", agent, "2.5", "--key", "fund-1"),
        ("agents", "withdraw", agent, "1"),
        ("agents", "rename", agent, "Renamed"),
        ("positions", "close", agent, "--token", TOKEN_A),
    ]  # fmt: skip
    lines = []
    for argv in runs:
        run = await run_cli(env, *argv, "--no-wait")
        assert run.code == 0, (argv, run.stderr)
        [line] = run.stdout.splitlines()
        lines.append(line)
    new_user = lines[0].split()[3]
    assert lines[0].startswith(f"sent: create_user user {new_user} key=cli-")
    assert lines[1].startswith(f"sent: create_agent user {user_id} key=cli-")
    assert lines[4] == f"sent: deposit agent {agent} (agent) key=fund-1"

    records = await read_all(services.kafka_bootstrap, commands_topic)
    assert len(records) == len(runs)
    records.sort(key=lambda r: r.timestamp)
    commands = [decode_command(r.value) for r in records]
    assert [r.key for r in records] == [new_user.encode()] + [str(user_id).encode()] * 7
    assert [type(c) for c in commands] == [
        CreateUserV1, CreateAgentV1, PatchConfigV1, PauseV1, DepositV1, WithdrawV1,
        RenameAgentV1, ClosePositionsV1,
    ]  # fmt: skip
    for line, command in zip(lines, commands, strict=True):
        assert line.endswith(f" key={command.idempotency_key}")
    create = commands[1]
    assert isinstance(create, CreateAgentV1)
    assert create.config == {"stopLoss": {"defaultPercentage": Decimal("-20.125")}}
    assert create.sol == Decimal(5)
    deposit = commands[4]
    assert isinstance(deposit, DepositV1)
    assert (deposit.agent_id, deposit.amount) == (agent_id, Decimal("2.5"))
    pause = commands[3]
    assert isinstance(pause, PauseV1) and pause.mode == "live"
    # Every partition of a user's commands is its signals' partition: the same key, the
    # same partition count, the same partitioner.
    assert len({r.partition for r in records[1:]}) == 1


async def test_an_unknown_agent_or_a_bad_amount_is_refused_here_and_nothing_is_sent(
    services: Services, topics: Topics, db_url: str, commands_topic: str
) -> None:
    _, agent_id = await _agent(db_url)
    env = worker_env(services, db_url, topics)
    unknown = uuid.uuid4()
    run = await run_cli(env, "agents", "fund", str(unknown), "1", "--no-wait")
    assert run.code == 2
    assert run.stdout == ""
    assert run.stderr[-1] == (
        f"signal-worker agents: no agent {unknown} in the database "
        "(see `signal-worker agents list`)"
    )
    run = await run_cli(env, "agents", "withdraw", str(agent_id), "1.5e-19", "--no-wait")
    assert run.code == 2
    assert run.stderr[-1].startswith("signal-worker agents: invalid withdraw command: amount: ")
    assert not any("Traceback" in line for line in run.stderr)
    # The broker has nothing: a marker sent after them is the topic's only record.
    marker = await run_cli(env, "agents", "pause", str(agent_id), "--no-wait")
    assert marker.code == 0, marker.stderr
    records = await read_all(services.kafka_bootstrap, commands_topic)
    assert [type(decode_command(r.value)) for r in records] == [PauseV1]


async def test_the_cli_waits_for_the_result_and_exits_by_it(
    services: Services, topics: Topics, db_url: str, commands_topic: str
) -> None:
    user_id, agent_id = await _agent(db_url, sol=Decimal(10))
    env = worker_env(services, db_url, topics)
    agent = str(agent_id)

    # Applied: the test stands in for the worker once the command is on the topic.
    proc = await start_cli(env, "agents", "fund", agent, "1.5", "--key", "f1", "--timeout", "60")
    [record] = await read_topic(services.kafka_bootstrap, commands_topic, 1)
    assert decode_command(record.value).idempotency_key == "f1"
    await _insert_result(
        db_url, user_id, "f1", "deposit", "applied", agent_id=agent_id,
        changes={"sol_balance": {"from": "10", "to": "11.5"}},
        payload=decode_command(record.value).payload_json(),
    )  # fmt: skip
    run = await finish_cli(proc)
    assert (run.code, run.stdout) == (
        0, f"applied: deposit agent {agent} (agent): sol_balance: 10 -> 11.5\n"
    )  # fmt: skip

    # Refused: exit 1 with the reason.
    proc = await start_cli(env, "agents", "withdraw", agent, "99", "--key", "w1", "--timeout", "60")
    records = await read_topic(services.kafka_bootstrap, commands_topic, 2)
    assert [decode_command(r.value).idempotency_key for r in records] == ["f1", "w1"]
    await _insert_result(
        db_url, user_id, "w1", "withdraw", "refused",
        reason="insufficient funds: 11.5 SOL, asked 99", agent_id=agent_id,
        payload=decode_command(records[1].value).payload_json(),
    )  # fmt: skip
    run = await finish_cli(proc)
    assert (run.code, run.stdout) == (
        1, f"refused: withdraw agent {agent} (agent): insufficient funds: 11.5 SOL, asked 99\n"
    )  # fmt: skip

    # No result: exit 3, saying how to see it later.
    run = await run_cli(env, "agents", "pause", agent, "--key", "p1", "--timeout", "1")
    assert run.code == 3, run.stderr
    assert run.stdout.startswith(f"timed out: no result for pause agent {agent} (agent) key=p1 ")
    assert "the worker may be down" in run.stdout
    assert run.stdout.strip().endswith("run it again with --key p1")
    assert len(run.stdout.splitlines()) == 1

    # Once decided, a re-run with the same key prints the result and sends nothing again.
    sent = {
        decode_command(r.value).idempotency_key: decode_command(r.value)
        for r in await read_all(services.kafka_bootstrap, commands_topic)
    }
    await _insert_result(db_url, user_id, "p1", "pause", "applied", agent_id=agent_id,
                         changes={"automated_trading_simulation": False},
                         payload=sent["p1"].payload_json())  # fmt: skip
    run = await run_cli(env, "agents", "pause", agent, "--key", "p1", "--timeout", "60")
    assert (run.code, run.stdout) == (
        0, f"applied: pause agent {agent} (agent): automated_trading_simulation: false\n"
    )  # fmt: skip
    records = await read_all(services.kafka_bootstrap, commands_topic)
    assert sorted(decode_command(r.value).idempotency_key or "" for r in records) == [
        "f1", "p1", "w1",
    ]  # fmt: skip


async def test_users_create_waits_for_its_result_and_prints_the_new_id(
    services: Services, topics: Topics, db_url: str, commands_topic: str
) -> None:
    env = worker_env(services, db_url, topics)
    proc = await start_cli(env, "users", "create", "--email", "x@example.com", "--key", "u1")
    [record] = await read_topic(services.kafka_bootstrap, commands_topic, 1)
    command = decode_command(record.value)
    assert isinstance(command, CreateUserV1) and record.key == str(command.user_id).encode()
    await _insert_result(db_url, command.user_id, "u1", "create_user", "applied",
                         changes={"email": "x@example.com"},
                         payload=command.payload_json())  # fmt: skip
    run = await finish_cli(proc)
    assert (run.code, run.stdout) == (
        0, f"applied: create_user user {command.user_id}: email: x@example.com\n"
    )  # fmt: skip


async def test_agents_list_and_show_read_the_database(
    services: Services, topics: Topics, db_url: str, db_conn: asyncpg.Connection
) -> None:
    user_id, agent_id = await _agent(
        db_url, sol=Decimal("10.25"), config={"stopLoss": {"defaultPercentage": -20}, "typo": 1}
    )
    other_user = await add_user(db_conn)
    await add_agent(db_conn, other_user)
    env = worker_env(services, db_url, topics)

    run = await run_cli(env, "agents", "list", "--user", str(user_id), "--format", "json")
    assert run.code == 0, run.stderr
    [listed] = json.loads(run.stdout)
    assert listed["agent_id"] == str(agent_id) and listed["sol_balance"] == "10.25"
    assert (listed["automated_trading_simulation"], listed["open_positions"]) == (True, 0)
    run = await run_cli(env, "agents", "list")
    assert run.code == 0 and len(run.stdout.splitlines()) == 3  # a header and both agents

    run = await run_cli(env, "agents", "show", str(agent_id))
    assert run.code == 0, run.stderr
    fields = dict(line.split(":", 1) for line in run.stdout.splitlines())
    assert fields["SOL (simulation)"].strip() == "10.25"
    assert fields["automated trading"].strip() == "simulation on, live on"
    assert fields["config"].strip().startswith("valid; keys the worker ignores: typo")

    run = await run_cli(env, "agents", "show", str(agent_id), "--config")
    assert run.code == 0, run.stderr
    shown = loads_exact(run.stdout)
    assert isinstance(shown, dict)
    assert shown["stopLoss"]["defaultPercentage"] == -20
    assert shown["purchaseLimits"]["minimumAgentBalance"] == Decimal("0.5")
    resolve_config(shown)

    run = await run_cli(env, "agents", "show", str(uuid.uuid4()))
    assert run.code == 2 and run.stderr[-1].startswith("signal-worker agents: no agent ")
