"""The failure policy: what each failure means, in each scope."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from aiokafka.errors import KafkaConnectionError

from worker.errors import InvalidMessage
from worker.failures import Action, Scope, disposition


def _postgres(sqlstate: str) -> asyncpg.PostgresError:
    kinds = {"40001": asyncpg.SerializationError, "23505": asyncpg.UniqueViolationError}
    return kinds[sqlstate]("it says no")


@pytest.mark.parametrize(
    ("exc", "scope", "action", "kind"),
    [
        (InvalidMessage("not JSON"), Scope.RECORD, Action.DEAD_LETTER, "invalid"),
        (ConnectionResetError(), Scope.RECORD, Action.RETRY, None),
        (KafkaConnectionError(), Scope.BATCH, Action.RETRY, None),
        (_postgres("40001"), Scope.BATCH, Action.RETRY, None),  # serialization failure
        (_postgres("23505"), Scope.BATCH, Action.ISOLATE, None),  # a unique key
        (ValueError("a bug"), Scope.BATCH, Action.ISOLATE, None),
        (_postgres("23505"), Scope.RECORD, Action.DEAD_LETTER, "database"),
        (ValueError("a bug"), Scope.RECORD, Action.DEAD_LETTER, "unexpected"),
        (asyncio.CancelledError(), Scope.RECORD, Action.FATAL, None),
        (KeyboardInterrupt(), Scope.BATCH, Action.FATAL, None),
        (ConnectionResetError(), Scope.LANE, Action.FATAL, None),  # retries ran out
        (ValueError("a bug"), Scope.LANE, Action.FATAL, None),
    ],
)
def test_each_failure_has_one_meaning(
    exc: BaseException, scope: Scope, action: Action, kind: str | None
) -> None:
    verdict = disposition(exc, scope)
    assert (verdict.action, verdict.kind) == (action, kind)


def test_retries_cut_short_by_the_stop_signal_are_abandoned_not_fatal() -> None:
    assert disposition(ConnectionResetError(), Scope.LANE, stopping=True).action is Action.ABANDON
    assert disposition(ValueError("x"), Scope.LANE, stopping=True).action is Action.FATAL


def test_dead_letter_reasons_say_what_happened() -> None:
    assert disposition(InvalidMessage("not JSON: x"), Scope.RECORD).reason == "not JSON: x"
    assert disposition(_postgres("23505"), Scope.RECORD).reason == (
        "database rejected it: UniqueViolationError: it says no"
    )
    assert disposition(ValueError("a bug"), Scope.RECORD).reason == (
        "unexpected error: ValueError: a bug"
    )
