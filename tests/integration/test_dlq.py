"""`signal-worker dlq list|show|redrive` on a real broker and database.

A worker run dead-letters a signal of a user that does not exist yet and a record that is
not JSON; `list` and `show` find both with their reasons and coordinates; once the user
exists, `redrive` sends the signal back and the worker trades it, once; a second redrive
of it sends nothing; the non-JSON record is refused unless forced. Redrives that were
started but never confirmed (a crash between the send and the mark) are refused unless
forced; cut-down dead letters are never sent.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import uuid
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Any

import asyncpg
import orjson
import pytest
import structlog
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.helpers.books import make_account, set_sol_price, signal_message
from tests.helpers.cli import run_cli
from tests.helpers.kafka import Sent, Topics, delete_topics, read_all, read_topic, send_all
from tests.helpers.services import Services
from tests.helpers.workers import env_for, make_settings, running_worker, wait_for_count
from worker.__main__ import _parser
from worker.commands import dlq
from worker.db import accounts
from worker.errors import WorkerError
from worker.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

NOT_JSON = b"\x1b[2Jnot json {"
TICK_TOKEN = "7GCihgDB8fe6KNjn2MYtkzZcRjQy3t9GHdC8uHYmW2hr"


@pytest.fixture(autouse=True)
def worker_logs_on_stderr() -> Iterator[None]:
    """The worker of these tests runs in this process and logs with structlog, whose
    unconfigured default prints to whatever `sys.stdout` is at the time: while
    `dlq_in_process` captures the CLI's stdout, a worker line (an hourly snapshot, a price
    history upkeep) landed in the middle of `--format json`. The worker's own
    `configure_logging` sends its lines to stderr; so do these tests."""
    saved = structlog.get_config()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))
    try:
        yield
    finally:
        structlog.configure(**saved)


async def dlq_in_process(settings: Settings, *argv: str) -> tuple[int, str]:
    """`dlq ARGV` run in this process: (exit code, stdout)."""
    args: argparse.Namespace = _parser().parse_args(["dlq", *argv])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = await dlq.run(settings, args)
    return code, out.getvalue()


def original(topic: str, sent: Sent) -> str:
    return f"{topic}:{sent.partition}:{sent.offset}"


async def end_offsets(bootstrap: str, topic: str) -> int:
    """How many records `topic` holds (every partition read to its end)."""
    return len(await read_all(bootstrap, topic))


async def redrive_rows(conn: asyncpg.Connection) -> dict[str, dict[str, Any]]:
    rows = await conn.fetch("SELECT * FROM dlq_redrives")
    return {
        f"{r['original_topic']}:{r['original_partition']}:{r['original_offset']}": dict(r)
        for r in rows
    }


async def test_a_dead_lettered_signal_is_listed_then_redriven_once_after_its_user_exists(
    services: Services, db_url: str, topics: Topics, db_conn: asyncpg.Connection
) -> None:
    await set_sol_price(db_conn, "100")
    bystander = await make_account(db_conn)
    stranger = uuid.uuid4()  # no such user yet
    settings = make_settings(services, db_url, topics)
    env = env_for(settings)
    bootstrap = services.kafka_bootstrap

    async with running_worker(settings):
        signal_sent, junk_sent = await send_all(
            bootstrap,
            topics.signals,
            [signal_message(stranger, idempotency_key="redrive-me"), NOT_JSON],
            keys=[str(stranger).encode(), b"junk-key"],
        )
        letters = await read_topic(bootstrap, topics.dlq, 2)
        assert len(letters) == 2
        signal_at = original(topics.signals, signal_sent)
        junk_at = original(topics.signals, junk_sent)

        # list: both, with reasons and coordinates (a subprocess: exit code and lines).
        listed = await run_cli(env, "dlq", "list")
        assert listed.code == 0, listed.stderr
        lines = listed.stdout.splitlines()
        assert lines[0].split() == ["dlq", "time", "original", "reason", "redriven", "value"]
        by_original = {line.split()[2]: line for line in lines[1:-1]}
        assert set(by_original) == {signal_at, junk_at}
        assert f"unknown user_id {stranger}: no such user" in by_original[signal_at]
        assert "\\x1b[2Jnot json {" in by_original[junk_at]  # escaped, not sent to the tty
        assert lines[-1] == f"2 dead letter(s) of {topics.dlq} shown"

        code, out = await dlq_in_process(settings, "list", "--format", "json", "--limit", "1")
        assert code == 0
        [first] = orjson.loads(out)
        assert first["reason"]
        assert first["redrive"] is None
        code, out = await dlq_in_process(settings, "list", "--topic", topics.prices)
        assert out.splitlines()[-1] == f"0 dead letter(s) of {topics.dlq} shown"

        # show: the whole dead letter, by its DLQ place and by its original coordinates.
        [signal_letter] = [r for r in letters if dict(r.headers)["original-offset"]
                           == str(signal_sent.offset).encode()
                           and r.key == str(stranger).encode()]  # fmt: skip
        code, shown = await dlq_in_process(
            settings, "show", f"{signal_letter.partition}:{signal_letter.offset}"
        )
        assert code == 0
        assert f"reason    unknown user_id {stranger}: no such user" in shown
        assert f"original  {signal_at}" in shown
        assert "  original-partition: " in shown
        assert '"idempotency_key":"redrive-me"' in shown
        code, by_coordinates = await dlq_in_process(settings, "show", "--original", signal_at)
        assert by_coordinates == shown

        # Nothing can go back yet: the user still does not exist, the junk is still junk.
        signals_before = await end_offsets(bootstrap, topics.signals)
        code, out = await dlq_in_process(settings, "redrive", "--all", "--dry-run")
        assert code == 1
        assert f"{signal_at} (dlq " in out
        assert f"refused: unknown user_id {stranger}: no such user (--force sends" in out
        assert out.splitlines()[-1] == (
            "dry run: would redrive 0, refused 2, already redriven 0; nothing was sent"
        )

        # The user and an agent now exist: the signal goes back, and is traded once.
        await db_conn.execute(
            "INSERT INTO users (id, email) VALUES ($1, $2)", stranger, f"{stranger}@test.local"
        )
        agent = await accounts.create_funded_agent(
            db_conn, stranger, "late agent", deposit_sol=Decimal(10)
        )
        redriven = await run_cli(env, "dlq", "redrive", "--original", signal_at)
        assert redriven.code == 0, (redriven.stdout, redriven.stderr)
        line, summary = redriven.stdout.splitlines()
        assert line.startswith(f"{signal_at} (dlq {signal_letter.partition}:")
        assert f": redriven as {topics.signals}:" in line
        assert summary == "redriven 1, refused 0, already redriven 0"
        await wait_for_count(
            db_url,
            "SELECT count(*) FROM signal_executions WHERE agent_id = $1 AND status = 'success'",
            1,
            agent.agent_id,
        )
        rows = await redrive_rows(db_conn)
        assert rows[signal_at]["status"] == "sent"
        assert rows[signal_at]["sent_to"] == line.rsplit(" as ", 1)[1]
        assert not rows[signal_at]["forced"]

        # The record went back as it was, saying where from.
        records = await read_all(bootstrap, topics.signals)
        assert len(records) == signals_before + 1
        [back] = [r for r in records if dict(r.headers).get("redriven-original")]
        assert back.key == str(stranger).encode()
        assert orjson.loads(back.value)["idempotency_key"] == "redrive-me"
        assert dict(back.headers)["redriven-original"] == signal_at.encode()
        assert dict(back.headers)["redriven-from"] == (
            f"{topics.dlq}:{signal_letter.partition}:{signal_letter.offset}".encode()
        )

        # A second redrive sends nothing; the junk is refused (exit 1) without --force.
        again = await run_cli(env, "dlq", "redrive", "--original", signal_at)
        assert again.code == 0, again.stderr
        assert f": already redriven at {rows[signal_at]['sent_at']:%Y-%m-%dT%H:%M:%S}" in (
            again.stdout
        )
        assert again.stdout.splitlines()[-1] == "redriven 0, refused 0, already redriven 1"
        refused = await run_cli(env, "dlq", "redrive", "--original", junk_at)
        assert refused.code == 1
        [junk_line, _] = refused.stdout.splitlines()
        assert junk_line.startswith(f"{junk_at} (dlq ")
        assert ": refused: " in junk_line
        assert junk_line.endswith("(--force sends it anyway)")
        assert junk_at not in await redrive_rows(db_conn)
        assert await end_offsets(bootstrap, topics.signals) == signals_before + 1

        # The worker traded the redriven signal once: a later signal of another user is
        # processed, and the stranger's signal still has its one execution.
        await send_all(bootstrap, topics.signals, [signal_message(bystander.user_id)])
        await wait_for_count(db_url, "SELECT count(*) FROM signal_executions", 2)
        assert (
            await db_conn.fetchval(
                "SELECT count(*) FROM trading_signals WHERE user_id = $1", stranger
            )
            == 1
        )
        assert (
            await db_conn.fetchval(
                "SELECT count(*) FROM signal_executions WHERE agent_id = $1", agent.agent_id
            )
            == 1
        )

        # Forced, the junk goes back, and the worker dead-letters it again under its new
        # coordinates (which could be redriven on their own).
        code, out = await dlq_in_process(settings, "redrive", "--original", junk_at, "--force")
        assert code == 0, out
        assert ": redriven (forced) as " in out
        new_at = out.splitlines()[0].rsplit(" as ", 1)[1]
        assert (await redrive_rows(db_conn))[junk_at]["forced"]
        await read_topic(bootstrap, topics.dlq, 3)
        code, out = await dlq_in_process(settings, "list", "--format", "json")
        listed_json = orjson.loads(out)
        assert len(listed_json) == 3
        again_dead = [d for d in listed_json
                      if f"{d['original_topic']}:{d['original_partition']}:"
                      f"{d['original_offset']}" == new_at]  # fmt: skip
        assert len(again_dead) == 1
        assert again_dead[0]["redrive"] is None


async def dead_letter(
    bootstrap: str,
    topics: Topics,
    value: bytes | None,
    origin: tuple[str, int, int],
    *,
    extra: Sequence[tuple[str, bytes]] = (),
) -> Sent:
    """A dead letter on the DLQ topic as the worker writes one."""
    headers = [
        ("trace-id", b"abc"),
        ("error", b"some reason"),
        ("original-topic", origin[0].encode()),
        ("original-partition", str(origin[1]).encode()),
        ("original-offset", str(origin[2]).encode()),
        *extra,
    ]
    [sent] = await send_all(bootstrap, topics.dlq, [value], keys=[b"k"], headers=[headers])
    return sent


async def test_an_unconfirmed_redrive_goes_again_only_when_forced(
    services: Services, db_url: str, topics: Topics, db_conn: asyncpg.Connection
) -> None:
    """A crash between the send and the mark leaves the row pending: the record may have
    gone out, so it is not sent again unless forced."""
    settings = make_settings(services, db_url, topics)
    bootstrap = services.kafka_bootstrap
    tick = orjson.dumps({"token_address": TICK_TOKEN, "price_usd": "0.5"})
    letter = await dead_letter(bootstrap, topics, tick, (topics.prices, 1, 7))
    at = f"{topics.prices}:1:7"
    await db_conn.execute(
        "INSERT INTO dlq_redrives (original_topic, original_partition, original_offset, "
        "dlq_topic, dlq_partition, dlq_offset, reason, status) "
        "VALUES ($1, 1, 7, $2, $3, $4, 'some reason', 'pending')",
        topics.prices,
        topics.dlq,
        letter.partition,
        letter.offset,
    )
    code, out = await dlq_in_process(settings, "redrive", "--original", at)
    assert code == 1
    assert "was not confirmed (it may have been sent" in out
    assert "(--force sends it anyway)" in out
    assert await end_offsets(bootstrap, topics.prices) == 0

    code, out = await dlq_in_process(settings, "list")
    assert " pending since " in out

    code, out = await dlq_in_process(settings, "redrive", "--reason-contains", "SOME", "--force")
    assert code == 0, out
    assert f"{at} (dlq {letter.partition}:{letter.offset}): redriven (forced) as " in out
    [back] = await read_all(bootstrap, topics.prices)
    assert back.value == tick
    assert back.key == b"k"
    assert back.headers[0] == ("trace-id", b"abc")  # its own headers, not the DLQ's
    assert {k for k, _ in back.headers} == {"trace-id", "redriven-from", "redriven-original"}
    row = (await redrive_rows(db_conn))[at]
    assert row["status"] == "sent"
    assert row["forced"]
    assert row["sent_to"] == f"{topics.prices}:{back.partition}:{back.offset}"


async def test_what_cannot_be_sent_is_refused_even_when_forced(
    services: Services, db_url: str, topics: Topics, db_conn: asyncpg.Connection
) -> None:
    settings = make_settings(services, db_url, topics)
    bootstrap = services.kafka_bootstrap
    tick = orjson.dumps({"token_address": TICK_TOKEN, "price_usd": "0.5"})
    await dead_letter(
        bootstrap,
        topics,
        tick[:10],
        (topics.prices, 0, 1),
        extra=[("payload", b"truncated"), ("original-size", b"900000")],
    )
    await dead_letter(bootstrap, topics, tick, ("someone-elses-topic", 0, 2))
    await dead_letter(bootstrap, topics, tick, (topics.prices, 0, 3))
    await dead_letter(bootstrap, topics, tick, (topics.prices, 0, 3))  # a duplicate

    code, out = await dlq_in_process(settings, "redrive", "--all", "--force", "--dry-run")
    assert code == 1
    lines = out.splitlines()
    assert any(
        line.startswith(f"{topics.prices}:0:1 ")
        and "refused: its value was cut down in the DLQ (payload: truncated, 900000 bytes" in line
        and not line.endswith("anyway)")
        for line in lines
    ), out
    assert any(
        line.startswith("someone-elses-topic:0:2 ") and "is not one this worker consumes" in line
        for line in lines
    ), out
    assert sum(f"{topics.prices}:0:3 " in line for line in lines) == 2
    assert any(line.endswith(": would redrive") for line in lines), out
    assert any("one redrive for both" in line for line in lines), out
    assert lines[-1] == (
        "dry run: would redrive 1, refused 2, already redriven 0, duplicates 1; nothing was sent"
    )
    assert await redrive_rows(db_conn) == {}
    assert await end_offsets(bootstrap, topics.prices) == 0

    code, out = await dlq_in_process(settings, "redrive", "--original", f"{topics.prices}:0:9")
    assert code == 1
    assert out.splitlines()[0] == (
        f"{topics.prices}:0:9: refused: no dead letter of it on {topics.dlq}"
    )


async def test_bad_arguments_exit_2_with_one_line(
    services: Services, db_url: str, topics: Topics
) -> None:
    env = env_for(make_settings(services, db_url, topics))
    nothing = await run_cli(env, "dlq", "redrive")
    assert nothing.code == 2
    assert nothing.stderr == [
        "signal-worker dlq: select what to redrive: --original T:P:O, --reason-contains TEXT "
        "or --all"
    ]
    bad = await run_cli(env, "dlq", "show", "--original", "no-colons")
    assert bad.code == 2
    assert "not topic:partition:offset" in bad.stderr[-1]
    missing = await run_cli(env, "dlq", "show", "0:999")
    assert missing.code == 1
    assert missing.stderr[-1] == f"signal-worker dlq: no dead letter {topics.dlq}:0:999"


async def test_a_send_the_broker_refuses_leaves_the_redrive_pending(
    services: Services, db_url: str, topics: Topics, db_conn: asyncpg.Connection
) -> None:
    """The redrive is claimed (committed 'pending') before the send: when the send fails
    after that, the row is there, and the next redrive does not send it blindly again."""
    bootstrap = services.kafka_bootstrap
    small = f"{topics.prices}.small"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(small, 1, 1, topic_configs={"max.message.bytes": "1000"})]
        )
    finally:
        await admin.close()
    try:
        settings = make_settings(services, db_url, topics, prices_topic=small)
        big = orjson.dumps({"token_address": TICK_TOKEN, "price_usd": "0.5", "note": "x" * 3000})
        await dead_letter(bootstrap, topics, big, (small, 0, 4))
        at = f"{small}:0:4"
        with pytest.raises(WorkerError, match=f"the broker failed while redriving {at}"):
            await dlq_in_process(settings, "redrive", "--original", at)
        assert (await redrive_rows(db_conn))[at]["status"] == "pending"

        code, out = await dlq_in_process(settings, "redrive", "--original", at)
        assert code == 1
        assert "was not confirmed" in out
    finally:
        await delete_topics(bootstrap, [small])
