"""Issue 24: `signal-worker notify` posts each chosen event of EVENTS_TOPIC once to a webhook,
in order per user, across a webhook outage, a restart, a relay re-send and a refusal.

Real Kafka and PostgreSQL; the webhook is a small HTTP/1.1 server in the test, answering as
each test scripts it. Events are produced as the relay produces them (JSON with event_id,
keyed by user id, headers event-id and event-type)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tests.helpers.cli import start_cli
from tests.helpers.db import connected
from tests.helpers.kafka import Topics, create_topics, delete_topics, send_all
from tests.helpers.services import Services
from tests.helpers.workers import wait_for, worker_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ALPHA = uuid.UUID("00000000-0000-4000-8000-0000000000a1")
BETA = uuid.UUID("00000000-0000-4000-8000-0000000000b2")


class Hook:
    """A webhook: records every request, answers with `answer(body)` (a status)."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, Any], int]] = []
        self.answer: Callable[[dict[str, Any]], int] = lambda _body: 200
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/hooks/SECRET-PATH"

    @property
    def accepted(self) -> list[str]:
        """The texts of the posts answered 2xx, in the order they came."""
        return [body["text"] for body, status in self.requests if 200 <= status < 300]

    def statuses(self) -> list[int]:
        return [status for _, status in self.requests]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # keep-alive: one request after another on the connection
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = 0
                for line in head.decode().split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                body = json.loads(await reader.readexactly(length))
                status = self.answer(body)
                self.requests.append((body, status))
                payload = b'{"ok": true}' if status < 300 else b'{"error": "scripted refusal"}'
                writer.write(
                    f"HTTP/1.1 {status} Scripted\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(payload)}\r\n\r\n".encode()
                    + payload
                )
                await writer.drain()
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def webhook() -> AsyncIterator[Hook]:
    hook = Hook()
    hook.server = await asyncio.start_server(hook.handle, "127.0.0.1", 0)
    try:
        yield hook
    finally:
        hook.server.close()


@pytest.fixture
async def events_topic(services: Services, topics: Topics) -> AsyncIterator[str]:
    name = f"{topics.signals}.events"  # the default EVENTS_TOPIC of these settings
    await create_topics(services.kafka_bootstrap, [name], 3)
    yield name
    await delete_topics(services.kafka_bootstrap, [name])


def buy(user: uuid.UUID, n: int, *, event_id: uuid.UUID | None = None) -> dict[str, Any]:
    """A buy event as the relay publishes it; its text names `n`."""
    return {
        "event_id": str(event_id or uuid.uuid4()),
        "type": "buy",
        "user_id": str(user),
        "agent_id": str(uuid.uuid4()),
        "token_symbol": f"T{n:03d}",
        "token_address": "7GCihgDB8fe6KNjn2MYtkzZcRjQy3t9GHdC8uHYmW2hr",
        "sol": 1.5,
        "price_sol": 0.000123,
        "signal_id": None,
        "event_at": "2026-11-26T12:00:00+00:00",
    }


def other(user: uuid.UUID, kind: str) -> dict[str, Any]:
    return {"event_id": str(uuid.uuid4()), "type": kind, "user_id": str(user),
            "agent_id": None, "token_symbol": "SKIP", "reason": "not chosen"}  # fmt: skip


async def publish_events(services: Services, topic: str, events: list[dict[str, Any]]) -> None:
    await send_all(
        services.kafka_bootstrap,
        topic,
        events,
        keys=[str(e["user_id"]).encode() for e in events],
        headers=[
            [("event-id", str(e["event_id"]).encode()), ("event-type", e["type"].encode())]
            for e in events
        ],
    )


def symbol(text: str) -> str:
    """The T### of a buy's text."""
    return next(word for word in text.split() if word.startswith("T") and word[1:].isdigit())


class Notify:
    """`python -m worker notify ...` as a subprocess, its stderr lines collected."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.env, self.args = env, args
        self.lines: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> Notify:
        self.proc = await start_cli(
            self.env, "notify", *self.args, stdout=asyncio.subprocess.DEVNULL
        )
        self._reader = asyncio.create_task(self._read())
        try:
            await wait_for(self._reading, timeout_s=60, what="notify reading the events topic")
        except AssertionError as exc:
            raise AssertionError(f"{exc}:\n{self.tail()}") from None
        return self

    async def _reading(self) -> bool:
        assert self.proc is not None
        if self.proc.returncode is not None:
            raise AssertionError(f"notify exited {self.proc.returncode}:\n{self.tail()}")
        return any('"notify_reading"' in line for line in self.lines)

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        async for raw in self.proc.stderr:
            self.lines.append(raw.decode("utf-8", "replace").rstrip())

    async def stop(self) -> int:
        """SIGTERM, wait; the exit code."""
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.terminate()
        code = await asyncio.wait_for(self.proc.wait(), 30)
        if self._reader is not None:
            await asyncio.wait_for(self._reader, 10)
        return code

    def events(self, name: str) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines if f'"{name}"' in line]

    def tail(self) -> str:
        return "\n".join(self.lines[-30:])


def env(services: Services, db_url: str, topics: Topics, url: str) -> dict[str, str]:
    values = worker_env(services, db_url, topics)
    values["NOTIFY_WEBHOOK_URL"] = url
    return values


async def test_posts_each_chosen_event_once_in_order_dropping_resends_and_refusals(
    services: Services, db_url: str, topics: Topics, events_topic: str
) -> None:
    alpha = [buy(ALPHA, n) for n in range(12)]
    beta = [buy(BETA, 100 + n) for n in range(12)]
    events: list[dict[str, Any]] = []
    for n in range(12):
        events += [alpha[n], beta[n]]
        if n == 4:
            events += [other(ALPHA, "executions_not_traded"), other(BETA, "dca_buy")]
    # The relay's re-send after a crash between Kafka's acknowledgement and its mark: the
    # same events again, same event_id, further down the partition.
    events += [dict(alpha[9]), dict(alpha[10]), dict(beta[11])]
    async with webhook() as hook:
        hook.answer = lambda body: 400 if "T105" in body["text"] else 200
        await publish_events(services, events_topic, events)
        notify = await Notify(
            env(services, db_url, topics, hook.url), "--start", "earliest", "--rate", "200"
        ).start()
        try:
            await wait_for(
                lambda: _at_least(hook, 24), timeout_s=60, what="every chosen event posted"
            )
            # Nothing more comes: the re-sent copies were read (the offsets are past them).
            await wait_for(
                lambda: _stored_past(db_url, len(events)), timeout_s=30, what="every record read"
            )
        finally:
            assert await notify.stop() == 0, notify.tail()
    posted = [symbol(t) for t in hook.accepted]
    expected_alpha = [f"T{n:03d}" for n in range(12)]
    expected_beta = [f"T{100 + n:03d}" for n in range(12) if n != 5]  # T105: refused
    assert [s for s in posted if s < "T100"] == expected_alpha  # each once, in order
    assert [s for s in posted if s >= "T100"] == expected_beta
    assert len(hook.requests) == 24  # 23 posted, 1 refused; no copy, no unchosen type
    assert hook.accepted[0] == (
        f"{alpha[0]['agent_id'][:4]}…{alpha[0]['agent_id'][-4:]} bought 1.5 SOL of T000 at "
        "0.000123 SOL"
    )  # no such agent in this database: its id, shortened
    refused = notify.events("notify_post_refused")
    assert [r["event_id"] for r in refused] == [beta[5]["event_id"]]
    assert "HTTP 400" in refused[0]["reason"] and "scripted refusal" in refused[0]["reason"]
    assert len(notify.events("notify_duplicate_dropped")) == 3
    assert not any("SECRET-PATH" in line for line in notify.lines)  # the URL is a secret
    async with connected(db_url) as conn:
        rows = await conn.fetch("SELECT outcome, count(*) AS n FROM notify_posted GROUP BY 1")
    outcomes = {r["outcome"]: r["n"] for r in rows}
    assert outcomes == {"posted": 23, "refused": 1}


async def _at_least(hook: Hook, n: int) -> bool:
    return len(hook.requests) >= n


async def _stored_past(db_url: str, records: int) -> bool:
    async with connected(db_url) as conn:
        total = await conn.fetchval("SELECT coalesce(sum(next_offset), 0) FROM notify_offsets")
    return int(total) >= records


async def test_a_failing_webhook_blocks_and_a_restart_neither_loses_nor_doubles(
    services: Services, db_url: str, topics: Topics, events_topic: str
) -> None:
    first = [buy(ALPHA, n) for n in range(10)]
    later = [buy(ALPHA, 10 + n) for n in range(6)]
    down = False

    def answer(_body: dict[str, Any]) -> int:
        # 500 for the first three requests (a webhook that fails, then recovers), then 200
        # until six are posted, then 503 while `down` (an outage the restart lands in).
        nonlocal down
        if len(hook.requests) < 3:
            return 500
        if len(hook.accepted) >= 6 and not down_over.is_set():
            down = True
            return 503
        return 200

    down_over = asyncio.Event()
    async with webhook() as hook:
        hook.answer = answer
        await publish_events(services, events_topic, first)
        notify_env = env(services, db_url, topics, hook.url)
        args = ("--start", "earliest", "--rate", "200")
        notify = await Notify(notify_env, *args).start()
        try:
            await wait_for(
                lambda: _failed_after(hook, 6), timeout_s=60, what="the webhook down after six"
            )
        finally:
            assert await notify.stop() == 0, notify.tail()  # stopped while it retried
        assert down
        retried = notify.events("notify_post_retrying")
        assert {r["reason"][:8] for r in retried} >= {"HTTP 500", "HTTP 503"}
        assert len(hook.accepted) == 6
        await publish_events(services, events_topic, later)  # the stream goes on meanwhile
        down_over.set()
        notify = await Notify(notify_env, *args).start()
        try:
            await wait_for(lambda: _accepted(hook, 16), timeout_s=60, what="all 16 posted")
            await wait_for(lambda: _stored_past(db_url, 16), timeout_s=30, what="all read")
        finally:
            assert await notify.stop() == 0, notify.tail()
    assert [symbol(t) for t in hook.accepted] == [f"T{n:03d}" for n in range(16)]
    assert hook.statuses()[:3] == [500, 500, 500]


async def _failed_after(hook: Hook, posted: int) -> bool:
    return len(hook.accepted) >= posted and hook.statuses()[-1] == 503


async def _accepted(hook: Hook, n: int) -> bool:
    return len(hook.accepted) >= n


async def test_without_a_webhook_notify_says_so_in_one_line(
    services: Services, db_url: str, topics: Topics
) -> None:
    values = worker_env(services, db_url, topics)
    values.pop("NOTIFY_WEBHOOK_URL", None)
    proc = await start_cli(values, "notify", "--url", "ftp://example.com/x")
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert err.decode().strip().splitlines() == [
        "signal-worker notify: --url: a webhook URL must be http(s)://host/..., not "
        "'ftp://example.com/…'"
    ]
