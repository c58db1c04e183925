"""The failure policy: what each failure means, in each scope."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import asyncpg
import pytest
from aiokafka.errors import (
    InvalidTimestampError,
    KafkaConnectionError,
    KafkaTimeoutError,
    NotLeaderForPartitionError,
    RequestTimedOutError,
    TopicAuthorizationFailedError,
)

from worker.errors import InvalidMessage
from worker.pipeline.failures import Action, Scope, disposition
from worker.pipeline.kafka import BrokerRefusedError
from worker.retry import SERVER_SQLSTATES, server_trouble


def _postgres(sqlstate: str) -> asyncpg.PostgresError:
    """The error asyncpg raises for `sqlstate` (its class, as the server would send it)."""
    meta: Any = type(asyncpg.PostgresError)  # asyncpg's SQLSTATE map (untyped)
    exc: asyncpg.PostgresError = meta.get_message_class_for_sqlstate(sqlstate)("it says no")
    setattr(exc, "sqlstate", sqlstate)  # noqa: B010 - asyncpg sets it from the server; here by hand
    return exc


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


# Every row of the table, and what lies next to it: (SQLSTATE, the cause or None for the
# record's own fault). Each class the issue names (insufficient resources, lock not
# available, query canceled and other operator intervention, system errors, connection
# exceptions, serialization failures and deadlocks) has cases of its own.
SQLSTATE_CASES = [
    ("08000", "connection"),
    ("08006", "connection"),  # connection_failure
    ("08P01", "connection"),  # protocol_violation
    ("25006", "read_only"),
    ("25P03", "idle_in_transaction_timeout"),
    ("40000", "transaction_rollback"),
    ("40001", "serialization_failure"),
    ("40003", "transaction_rollback"),  # statement completion unknown
    ("40P01", "deadlock"),
    ("42501", "insufficient_privilege"),
    ("53000", "insufficient_resources"),
    ("53100", "disk_full"),
    ("53200", "out_of_memory"),
    ("53300", "too_many_connections"),
    ("53400", "insufficient_resources"),  # configuration_limit_exceeded
    ("55000", "object_not_in_prerequisite_state"),
    ("55006", "object_not_in_prerequisite_state"),  # object_in_use
    ("55P03", "lock_not_available"),
    ("57000", "operator_intervention"),
    ("57014", "query_canceled"),
    ("57P01", "admin_shutdown"),
    ("57P02", "crash_shutdown"),
    ("57P03", "cannot_connect_now"),
    ("57P04", "operator_intervention"),  # database_dropped
    ("57P05", "idle_session_timeout"),
    ("58000", "system_error"),
    ("58030", "system_error"),  # io_error
    ("58P01", "system_error"),  # undefined_file
    ("F0000", "config_file_error"),
    ("XX000", "internal_error"),
    ("XX001", "internal_error"),  # data_corrupted
    ("XX002", "internal_error"),  # index_corrupted
    # The record's own fault: dead-lettered (after the batch is redone record by record).
    ("22003", None),  # numeric_value_out_of_range
    ("22P02", None),  # invalid_text_representation
    ("23505", None),  # unique_violation
    ("23514", None),  # check_violation
    ("40002", None),  # a deferred constraint at commit
    ("25P02", None),  # in_failed_sql_transaction: a bug of ours, not the server's state
    ("42P01", None),  # undefined_table: a schema the worker was not migrated for
]


@pytest.mark.parametrize(("sqlstate", "cause"), SQLSTATE_CASES)
def test_each_sqlstate_is_the_server_s_trouble_or_the_record_s(
    sqlstate: str, cause: str | None
) -> None:
    exc = _postgres(sqlstate)
    assert server_trouble(exc) == cause
    batch = disposition(exc, Scope.BATCH).action
    record = disposition(exc, Scope.RECORD)
    if cause is None:
        assert (batch, record.action, record.kind) == (
            Action.ISOLATE,
            Action.DEAD_LETTER,
            "database",
        )
    else:  # retried in every scope, never dead-lettered
        assert (batch, record.action) == (Action.RETRY, Action.RETRY)


def test_the_table_has_a_case_for_each_row() -> None:
    tested = {state for state, _ in SQLSTATE_CASES}
    for key in SERVER_SQLSTATES:
        assert key in tested or any(s.startswith(key) for s in tested), key


@pytest.mark.parametrize(
    ("exc", "cause"),
    [
        (ConnectionRefusedError(), "connection"),
        (TimeoutError(), "timeout"),  # asyncpg's command_timeout
        (asyncpg.exceptions.ConnectionDoesNotExistError("gone"), "connection"),
        (asyncpg.InterfaceError("connection is closed"), "connection"),
        # Seen from the price-history upkeep after a PostgreSQL restart (it stopped the worker).
        (
            asyncpg.exceptions._base.InternalClientError(
                "cannot switch to state 15; another operation (2) is in progress"
            ),
            "connection",
        ),
        (KafkaConnectionError(), "kafka"),
        (KafkaTimeoutError(), "kafka"),
        (NotLeaderForPartitionError(), "kafka"),  # retriable: a leader moving
        (RequestTimedOutError(), "kafka"),
        (InvalidTimestampError(), None),  # a letter refused for what it carries
        (TopicAuthorizationFailedError(), None),  # fails at once: never passes on its own
        (BrokerRefusedError("SASL authentication failed"), None),
        (asyncpg.exceptions._base.DataError("invalid input for query argument $1"), None),
        (ssl.SSLCertVerificationError("certificate verify failed"), None),
        (MemoryError(), "out_of_memory"),
        (OSError(28, "No space left on device"), "connection"),
        (ValueError("a bug"), None),
        (InvalidMessage("not JSON"), None),
    ],
)
def test_errors_of_the_clients_are_classified_too(exc: BaseException, cause: str | None) -> None:
    assert server_trouble(exc) == cause


def test_dead_letter_reasons_say_what_happened() -> None:
    assert disposition(InvalidMessage("not JSON: x"), Scope.RECORD).reason == "not JSON: x"
    assert disposition(_postgres("23505"), Scope.RECORD).reason == (
        "database rejected it: UniqueViolationError: it says no"
    )
    assert disposition(ValueError("a bug"), Scope.RECORD).reason == (
        "unexpected error: ValueError: a bug"
    )
