"""Publish one command to COMMANDS_TOPIC and wait for its result row.

The message is built from the wire models (`worker.messages`) and validated with
`decode_command` before it is sent, so a bad flag is refused here in one line (exit 2) and
never reaches the worker. It is keyed by its user id (UTF-8 text), like a signal, so a
user's commands and signals keep one order. The producer is `publish`'s (acks from every
in-sync replica, idempotent, the same client options and time limits).

Every command carries an idempotency key (`--key`, else `cli-<random hex>`), and its result
is the `command_results` row of (user id, key): the CLI polls PostgreSQL for it every
`POLL_S` until `--timeout`. Before it sends, it looks for that row: a re-run with the same
`--key` prints the result of the command already applied and sends nothing (the worker
would apply the key once anyway). One line on stdout, and the exit code:

- `applied: <command> <agent or user>: <what changed>`, exit 0;
- `refused: <command> <agent or user>: <reason>`, exit 1;
- `sent: <command> <agent or user> key=K` with `--no-wait`, exit 0;
- `timed out: ...` (the worker may be down or behind; how to see the result later), exit 3.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg
from aiokafka.errors import KafkaError

from worker.commands.text import printable
from worker.db.agent_listing import CommandResult, command_result
from worker.domain.commands import same_command
from worker.domain.exact_json import JsonRefusedError, dumps_exact, loads_exact
from worker.domain.money import fmt
from worker.errors import InvalidMessage, UsageError, WorkerError
from worker.messages import CommandV1, decode_command
from worker.pipeline.kafka import make_producer, require_topics, start_client
from worker.retry import SERVICE_ERRORS, describe
from worker.settings import Settings

POLL_S = 0.2
EXIT_APPLIED = 0
EXIT_REFUSED = 1
EXIT_TIMED_OUT = 3
# A value of a result's changes longer than this is cut (the line stays one line).
SHOWN_VALUE_CHARS = 120


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A validated command, its record value, and how the CLI names it: `subject` (`agent
    <id> (<name>)` or `user <id>`) and `again` (the flags that repeat it, for the
    timed-out line)."""

    command: CommandV1
    raw: bytes
    subject: str
    again: str

    @property
    def key(self) -> str:
        """The idempotency key (the CLI always sets one)."""
        assert self.command.idempotency_key is not None  # noqa: S101 - `encode` sets it
        return self.command.idempotency_key

    @property
    def name(self) -> str:
        """The command's name (`deposit`, `create_agent`, ...)."""
        return self.command.command


def new_key() -> str:
    """A fresh idempotency key for a command that was given none."""
    return f"cli-{uuid.uuid4().hex}"


def encode(message: dict[str, Any], *, subject: str, again: str) -> Outgoing:
    """The message as its record value (exact JSON), validated as the worker will read it;
    `UsageError` (exit 2) with the reason, in one line, when the worker would refuse it."""
    if not message.get("idempotency_key"):
        message = {**message, "idempotency_key": new_key()}
    raw = dumps_exact(message).encode()
    try:
        command = decode_command(raw)
    except InvalidMessage as exc:
        raise UsageError(str(exc)) from exc
    return Outgoing(command, raw, subject, again)


def read_json_object(text: str, what: str) -> dict[str, Any]:
    """A JSON object from text, read by the worker's exact reader; `UsageError` naming
    `what` (a file or a flag) otherwise."""
    try:
        value = loads_exact(text)
    except JsonRefusedError as exc:
        raise UsageError(f"{what}: {exc}") from exc
    if not isinstance(value, dict):
        raise UsageError(f"{what}: must be a JSON object ({{...}})")
    return value


async def send(
    settings: Settings, outgoing: Outgoing, *, conn: asyncpg.Connection | None, timeout_s: float
) -> int:
    """Publish the command; with `conn`, wait up to `timeout_s` for its result. Prints the
    one line and returns the exit code."""
    user_id = outgoing.command.user_id
    if conn is not None:
        earlier = await command_result(conn, user_id, outgoing.key)
        if earlier is not None:  # a re-run with the same --key: already decided
            return _report(outgoing, earlier)
    await publish_command(settings, outgoing)
    if conn is None:
        print(f"sent: {outgoing.name} {outgoing.subject} key={outgoing.key}")
        return EXIT_APPLIED
    try:
        result = await wait_for_result(conn, user_id, outgoing.key, timeout_s)
    except SERVICE_ERRORS as exc:
        raise WorkerError(
            f"sent {outgoing.name} {outgoing.subject} key={outgoing.key}, but lost PostgreSQL "
            f"while waiting for its result ({describe(exc)}); see it later: {outgoing.again}"
        ) from exc
    if result is None:
        print(
            f"timed out: no result for {outgoing.name} {outgoing.subject} key={outgoing.key} "
            f"after {timeout_s:g}s: the worker may be down or behind (it applies the command "
            f"when it reaches it); see its result later: {outgoing.again}"
        )
        return EXIT_TIMED_OUT
    return _report(outgoing, result)


async def publish_command(settings: Settings, outgoing: Outgoing) -> None:
    """Send the record, keyed by its user id, and wait for the broker's acknowledgement;
    one-line `WorkerError` when the broker fails."""
    kafka = settings.kafka
    topic = kafka.commands_topic
    await require_topics(kafka, [topic], timeout_s=settings.startup_timeout_s)
    producer = make_producer(kafka)
    await start_client(producer, kafka, timeout_s=settings.startup_timeout_s)
    try:
        await producer.send_and_wait(
            topic, outgoing.raw, key=str(outgoing.command.user_id).encode()
        )
    except KafkaError as exc:
        raise WorkerError(
            f"{outgoing.name} {outgoing.subject} may not have been sent: the broker failed "
            f"({describe(exc)}); send it again with the same key (applied once): "
            f"{outgoing.again}"
        ) from exc
    finally:
        await producer.stop()


async def wait_for_result(
    conn: asyncpg.Connection, user_id: uuid.UUID, key: str, timeout_s: float
) -> CommandResult | None:
    """The result row of (user, key), read every `POLL_S`; None after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = await command_result(conn, user_id, key)
        if result is not None:
            return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        await asyncio.sleep(min(POLL_S, remaining))


def _report(outgoing: Outgoing, result: CommandResult) -> int:
    line = outcome_line(outgoing, result)
    print(line)
    return EXIT_APPLIED if line.startswith("applied") else EXIT_REFUSED


def outcome_line(outgoing: Outgoing, result: CommandResult) -> str:
    """`applied: ...: <changes>` or `refused: ...: <reason>`. A result of another command
    under the same key (a `--key` used twice) is not this command's: refused, saying so."""
    head = f"{outgoing.name} {outgoing.subject}"
    mine = result.payload is None or same_command(
        result.command, result.payload, outgoing.name, outgoing.command.payload_json()
    )
    if result.command == outgoing.name and not mine:
        return (
            f"refused: {head}: the key {outgoing.key!r} was used before for a {result.command} "
            f"command with other values ({result.status}); give another --key"
        )
    if result.command != outgoing.name:
        return (
            f"refused: {head}: the key {outgoing.key!r} was used before for a "
            f"{result.command} command ({result.status}); give another --key"
        )
    if result.status != "applied":
        return printable(f"refused: {head}: {result.reason}")
    changed = describe_changes(result.changes)
    if result.agent_id is not None and str(result.agent_id) not in outgoing.subject:
        changed = f"agent {result.agent_id}; {changed}"
    return printable(f"applied: {head}: {changed}")


def describe_changes(text: str | None) -> str:
    """The result's `changes` JSON in a few words: `key: value` per leaf (nested keys
    dotted), `key: a -> b` for a {from, to} pair (or old/new, before/after)."""
    if text is None:
        return "no change recorded"
    try:
        changes = loads_exact(text)
    except JsonRefusedError:
        return _cut(text)
    parts = list(_leaves("", changes))
    return ", ".join(parts) if parts else "nothing changed"


_PAIRS = (("from", "to"), ("old", "new"), ("before", "after"))


def _leaves(prefix: str, value: object) -> list[str]:
    if isinstance(value, dict):
        for old, new in _PAIRS:
            if value.keys() == {old, new}:
                return [f"{prefix}: {_shown(value[old])} -> {_shown(value[new])}"]
        if value or not prefix:
            dot = f"{prefix}." if prefix else ""
            return [part for k, v in value.items() for part in _leaves(f"{dot}{k}", v)]
    return [f"{prefix}: {_shown(value)}" if prefix else _shown(value)]


def _shown(value: object) -> str:
    if isinstance(value, str):
        return _cut(value)
    if isinstance(value, Decimal):
        return fmt(value)
    return _cut(dumps_exact(value))


def _cut(text: str) -> str:
    return text if len(text) <= SHOWN_VALUE_CHARS else text[:SHOWN_VALUE_CHARS] + "…"
