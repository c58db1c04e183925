"""`configure_logging`: JSON lines by default, console for humans, and never a secret."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog

from worker.runtime.logging import Repeats, configure_logging
from worker.settings import Settings

DSN = "postgresql://worker:hunter2-db@db.internal:5432/signals"


@pytest.fixture
def configure(
    capsys: pytest.CaptureFixture[str],
) -> Iterator[Callable[..., Callable[[], list[str]]]]:
    """Configure logging as `__main__` does; returns a reader of the stderr lines so far.

    Restores structlog's defaults and the standard library's loggers afterwards.
    """
    root = logging.getLogger()
    aiokafka = logging.getLogger("aiokafka")
    levels = (root.level, aiokafka.level)
    handlers = list(root.handlers)

    def setup(**fields: Any) -> Callable[[], list[str]]:
        configure_logging(Settings(**fields))

        def lines() -> list[str]:
            return [line for line in capsys.readouterr().err.splitlines() if line.strip()]

        return lines

    yield setup
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
    root.setLevel(levels[0])
    aiokafka.setLevel(levels[1])
    structlog.reset_defaults()


def test_json_is_the_default_with_level_timestamp_and_fields(configure: Any) -> None:
    lines = configure()
    structlog.get_logger("t").info("signal_received", topic="t1", partition=2, offset=7)
    [line] = lines()
    event = json.loads(line)
    assert event["event"] == "signal_received"
    assert event["level"] == "info"
    assert (event["topic"], event["partition"], event["offset"]) == ("t1", 2, 7)
    assert event["timestamp"].endswith("Z")


def test_console_format_is_not_json_and_shows_event_and_fields(configure: Any) -> None:
    lines = configure(log_format="console")
    structlog.get_logger("t").warning("record_dead_lettered", reason="not JSON", offset=3)
    [line] = lines()
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)
    assert "record_dead_lettered" in line
    assert "warn" in line
    assert "offset=3" in line
    assert "not JSON" in line


def test_log_level_filters_lower_levels(configure: Any) -> None:
    lines = configure(log_level="WARNING")
    log = structlog.get_logger("t")
    log.info("quiet")
    log.warning("loud")
    assert [json.loads(line)["event"] for line in lines()] == ["loud"]


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_dsn_passwords_are_masked_in_values_nested_values_and_secret_keys(
    configure: Any, log_format: str
) -> None:
    lines = configure(log_format=log_format)
    structlog.get_logger("t").info(
        "worker_starting",
        database=DSN,
        error=f"cannot reach {DSN}: connection refused",
        keyword="host=db password=hunter2-kw dbname=signals",
        nested={"urls": [DSN]},
        password="hunter2-key",
        sasl_plain_password="hunter2-sasl",
    )
    [line] = lines()
    assert "hunter2" not in line
    assert "postgresql://worker:***@db.internal:5432/signals" in line


def test_library_lines_are_json_too_and_masked(configure: Any) -> None:
    lines = configure()
    logging.getLogger("aiokafka.client").error('Unable connect to "%s": %s', "b:9094", DSN)
    [line] = lines()
    event = json.loads(line)
    assert event["level"] == "error"
    assert event["logger"] == "aiokafka.client"
    assert event["event"].startswith('Unable connect to "b:9094"')
    assert "hunter2" not in line


def test_errors_that_aiokafka_retries_itself_are_warnings(configure: Any) -> None:
    lines = configure()
    fetcher = logging.getLogger("aiokafka.consumer.fetcher")
    fetcher.error(
        "Failed fetch offsets from 1: [Error 6] NotLeaderForPartitionError: "
        "TopicPartition(topic='t.p', partition=2)"
    )
    fetcher.error("Unexpected error in fetcher routine")
    retried, other = (json.loads(line) for line in lines())
    assert retried["level"] == "warning"
    assert "NotLeaderForPartitionError" in retried["event"]
    assert other["level"] == "error"


def _fail_with_a_secret_in_a_local() -> None:
    password = "hunter2-local"
    raise RuntimeError(f"boom ({len(password)} characters)")


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_tracebacks_show_no_local_variables(configure: Any, log_format: str) -> None:
    lines = configure(log_format=log_format)
    try:
        _fail_with_a_secret_in_a_local()
    except RuntimeError:
        structlog.get_logger("t").exception("unexpected_failure")
    text = "\n".join(lines())
    assert "unexpected_failure" in text
    assert "boom (13 characters)" in text
    assert "_fail_with_a_secret_in_a_local" in text
    assert "hunter2-local" not in text


def test_json_traceback_is_structured(configure: Any) -> None:
    lines = configure()
    try:
        _fail_with_a_secret_in_a_local()
    except RuntimeError:
        structlog.get_logger("t").exception("unexpected_failure")
    [line] = lines()
    exception = json.loads(line)["exception"]
    assert exception[0]["exc_type"] == "RuntimeError"
    assert "locals" not in exception[0]["frames"][-1]


def test_auto_is_json_when_stderr_is_not_a_terminal(configure: Any) -> None:
    lines = configure(log_format="auto")  # pytest's captured stderr is no terminal
    structlog.get_logger("t").info("tick_applied", token="T")
    [line] = lines()
    assert json.loads(line)["event"] == "tick_applied"


def test_auto_is_console_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from worker.runtime.logging import is_console

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert is_console(Settings(log_format="auto"))
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    assert not is_console(Settings(log_format="auto"))
    assert is_console(Settings(log_format="console"))
    assert not is_console(Settings(log_format="json"))


@pytest.mark.parametrize(
    ("logger", "message"),
    [
        ("aiokafka.consumer.group_coordinator",
         "Group Coordinator Request failed: [Error 15] GroupCoordinatorNotAvailableError"),
        ("aiokafka.cluster", "Topic t.signals not found in cluster metadata"),
        ("aiokafka.consumer.group_coordinator",
         "OffsetCommit failed for group g due to group error (CoordinatorLoadInProgressError)"),
    ],
)  # fmt: skip
def test_a_new_brokers_start_up_states_are_warnings(
    configure: Any, logger: str, message: str
) -> None:
    lines = configure()
    logging.getLogger(logger).error(message)
    [line] = lines()
    assert json.loads(line)["level"] == "warning"


def test_a_repeated_line_is_written_once_per_interval_with_the_count_left_out() -> None:
    now = [0.0]
    repeats = Repeats(interval_s=60, clock=lambda: now[0])
    written = []
    for second in range(0, 185):
        now[0] = float(second)
        left_out = repeats.admit(("aiokafka", "Unable connect to node %s"))
        if left_out is not None:
            written.append((second, left_out))
    assert written == [(0, 0), (60, 59), (120, 59), (180, 59)]
    assert repeats.admit("another kind") == 0  # each kind apart


def test_library_errors_repeated_in_an_outage_become_one_line_with_a_count(
    configure: Callable[..., Callable[[], list[str]]],
) -> None:
    read = configure(log_format="json")
    library = logging.getLogger("aiokafka.conn")
    for node in range(500):
        library.error("Unable connect to node with id %s: %s", node % 3, "refused")
    structlog.get_logger("worker.retry").warning(
        "retrying_after_transient_error", cause="lock_not_available", attempt=1
    )
    for attempt in range(2, 50):
        structlog.get_logger("worker.retry").warning(
            "retrying_after_transient_error", cause="lock_not_available", attempt=attempt
        )
    structlog.get_logger("worker.x").warning("record_dead_lettered", offset=1)
    structlog.get_logger("worker.x").warning("record_dead_lettered", offset=2)
    lines = [json.loads(line) for line in read()]
    assert [line["event"][:22] for line in lines] == [
        "Unable connect to node",
        "retrying_after_transie",
        "record_dead_lettered",  # lines naming a record are never left out
        "record_dead_lettered",
    ]
