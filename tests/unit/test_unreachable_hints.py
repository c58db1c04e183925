"""What the one line says when a service cannot be reached (`worker.retry.unreachable_hint`)
and how long a command waits (`startup_wait_s`): issue 25, item 5."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from worker import retry
from worker.retry import INTERACTIVE_WAIT_S, is_unresolvable, startup_wait_s, unreachable_hint

REFUSED = ConnectionRefusedError(111, "Connection refused")
NO_NAME = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
TRY_AGAIN = socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")


@pytest.fixture
def interactive() -> Iterator[None]:
    retry.set_interactive(True)
    try:
        yield
    finally:
        retry.set_interactive(False)


def test_a_refused_local_service_is_asked_about_and_make_services_named() -> None:
    hint = unreachable_hint("Kafka", "KAFKA_BOOTSTRAP_SERVERS", ["127.0.0.1:9092"], REFUSED, 3)
    assert hint == (
        "nothing listens at 127.0.0.1:9092 (connection refused, for 3s): is Kafka running "
        "there? (`make services` starts local ones; else check KAFKA_BOOTSTRAP_SERVERS)"
    )


def test_a_refused_remote_service_is_not_sent_to_make_services() -> None:
    hint = unreachable_hint("PostgreSQL", "DATABASE_URL", ["db.internal:5432"], REFUSED, 30)
    assert hint == (
        "nothing listens at db.internal:5432 (connection refused, for 30s): is PostgreSQL "
        "running there? (check DATABASE_URL)"
    )


def test_a_name_that_does_not_exist_is_named_and_a_resolver_hiccup_is_not() -> None:
    hint = unreachable_hint("Kafka", "KAFKA_BOOTSTRAP_SERVERS", ["kafka.invalid:9092"], NO_NAME, 3)
    assert hint == "the host name 'kafka.invalid' does not resolve (check KAFKA_BOOTSTRAP_SERVERS)"
    assert is_unresolvable(NO_NAME)
    assert not is_unresolvable(TRY_AGAIN)  # a resolver's temporary failure: retried


def test_no_answer_suggests_a_firewall_or_the_wrong_address() -> None:
    hint = unreachable_hint(
        "Kafka", "KAFKA_BOOTSTRAP_SERVERS", ["10.0.0.9:9092"], TimeoutError(), 5
    )
    assert hint == (
        "no answer from 10.0.0.9:9092 (for 5s): a firewall, or the wrong host or port? "
        "(check KAFKA_BOOTSTRAP_SERVERS)"
    )


def test_a_service_waits_startup_timeout_s() -> None:
    assert startup_wait_s(30) == 30


@pytest.mark.usefixtures("interactive")
def test_a_command_a_person_runs_waits_a_few_seconds_at_most() -> None:
    assert startup_wait_s(30) == INTERACTIVE_WAIT_S == 3
    assert startup_wait_s(1) == 1
